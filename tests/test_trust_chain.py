"""Every link of the trust chain is checked: tampered, truncated or foreign data is refused."""

from __future__ import annotations

import datetime
import shutil
import zlib

import pytest

from helpers import run_cli
from ucernvm.client.repository import Repository
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.envelope import seal, split_signed
from ucernvm.cvmfs.hashing import HashAlgorithm
from ucernvm.cvmfs.manifest import Manifest
from ucernvm.cvmfs.signing import generate_repository_keys, load_private_key, sign_manifest, sign_raw, sign_whitelist
from ucernvm.cvmfs.trust import certificate_fingerprint, load_certificate, load_master_keys
from ucernvm.cvmfs.whitelist import Whitelist, new_whitelist
from ucernvm.errors import VerificationError

FOO_OBJECT = "data/d8/5ab7e835750785b0535d4fbba7d59e921b1f48"  # "foo\n"
NESTED_CATALOG = "data/8e/2b7e33e9f84d5104be60a8338d1d9fd6f0ce51C"  # /needs_migration


def open_legacy(legacy, **kwargs) -> Repository:
    return Repository(
        DirectorySource(legacy.repo), legacy.fqrn, load_master_keys(kwargs.pop("key", legacy.pub)), now=legacy.now, **kwargs
    )


def now_arg(legacy) -> str:
    return str(int(legacy.now.timestamp()))


def assert_refused(legacy, *args: str, message: bytes) -> None:
    result = run_cli("repo", *args, "--now", now_arg(legacy))
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout == b""


def test_wrong_master_key_is_refused(legacy, tmp_path) -> None:
    generate_repository_keys(legacy.fqrn, tmp_path / "other")
    assert_refused(
        legacy, "verify", str(legacy.repo), "--key", str(tmp_path / "other" / f"{legacy.fqrn}.pub"),
        message=b"whitelist signature does not verify with the trusted master key",
    )  # fmt: skip


def test_changed_manifest_line_is_refused(legacy) -> None:
    path = legacy.repo / ".cvmfspublished"
    path.write_bytes(path.read_bytes().replace(b"\nS2\n", b"\nS3\n", 1))
    assert_refused(legacy, "verify", str(legacy.repo), "--key", str(legacy.pub), message=b"text was altered")


def test_manifest_with_recomputed_hash_but_no_valid_signature_is_refused(legacy) -> None:
    path = legacy.repo / ".cvmfspublished"
    signed = split_signed(path.read_bytes(), "manifest")
    text = signed.text.replace(b"\nS2\n", b"\nS3\n")
    hash_line = __import__("hashlib").sha1(text).hexdigest().encode()
    path.write_bytes(text + b"--\n" + hash_line + b"\n" + signed.signature)
    assert_refused(legacy, "verify", str(legacy.repo), "--key", str(legacy.pub), message=b"manifest signature is invalid")


def test_manifest_for_another_repository_is_refused(legacy) -> None:
    """Correctly signed with the repository key, but naming another repository."""
    path = legacy.repo / ".cvmfspublished"
    manifest = Manifest.parse(split_signed(path.read_bytes(), "manifest").text).replace(fqrn="other.cern.ch")
    path.write_bytes(sign_manifest(manifest, load_private_key(legacy.keys / f"{legacy.fqrn}.key")))
    with pytest.raises(VerificationError, match="manifest is for repository 'other.cern.ch'"):
        open_legacy(legacy)


def test_manifest_naming_no_repository_is_refused(legacy) -> None:
    """Signed with the repository key but without its N line: cvmfs refuses it, since the certificate may sign
    other repositories' manifests too."""
    path = legacy.repo / ".cvmfspublished"
    manifest = Manifest.parse(split_signed(path.read_bytes(), "manifest").text).replace(fqrn=None)
    path.write_bytes(sign_manifest(manifest, load_private_key(legacy.keys / f"{legacy.fqrn}.key")))
    with pytest.raises(VerificationError, match="manifest names no repository"):
        open_legacy(legacy)


def test_whitelist_for_another_repository_is_refused(legacy) -> None:
    certificate = load_certificate((legacy.keys / f"{legacy.fqrn}.crt").read_bytes())
    master = load_private_key(legacy.keys / f"{legacy.fqrn}.masterkey")
    whitelist = new_whitelist("other.cern.ch", [certificate], legacy.now - datetime.timedelta(days=1))
    (legacy.repo / ".cvmfswhitelist").write_bytes(sign_whitelist(whitelist, master))
    assert_refused(legacy, "verify", str(legacy.repo), "--key", str(legacy.pub), message=b"whitelist is for repository 'other.cern.ch'")


def test_certificate_missing_from_whitelist_is_refused(legacy, tmp_path) -> None:
    keys = generate_repository_keys(legacy.fqrn, tmp_path / "k")
    stranger = load_certificate(keys["crt"].read_bytes())
    master = load_private_key(legacy.keys / f"{legacy.fqrn}.masterkey")
    whitelist = new_whitelist(legacy.fqrn, [stranger], legacy.now - datetime.timedelta(days=1))
    (legacy.repo / ".cvmfswhitelist").write_bytes(sign_whitelist(whitelist, master))
    with pytest.raises(VerificationError, match="certificate is not on the whitelist"):
        open_legacy(legacy)


def test_resigned_whitelist_is_accepted(legacy) -> None:
    """The same re-signing with the right name and certificate passes: the tests above fail for their cause."""
    certificate = load_certificate((legacy.keys / f"{legacy.fqrn}.crt").read_bytes())
    master = load_private_key(legacy.keys / f"{legacy.fqrn}.masterkey")
    now = datetime.datetime.now(datetime.timezone.utc)
    (legacy.repo / ".cvmfswhitelist").write_bytes(sign_whitelist(new_whitelist(legacy.fqrn, [certificate], now), master))
    result = run_cli("repo", "verify", legacy.repo, "--key", legacy.pub)
    assert result.returncode == 0, result.stderr
    assert Whitelist.parse(split_signed((legacy.repo / ".cvmfswhitelist").read_bytes(), "w").text).fqrn == legacy.fqrn


def write_whitelist(legacy, lines: list[bytes]) -> None:
    """A whitelist of these lines, dated around the fixture's time and signed with its master key."""
    master = load_private_key(legacy.keys / f"{legacy.fqrn}.masterkey")
    head = [b"20151021115513", b"E20151120115513", b"N" + legacy.fqrn.encode()]
    hash_line, unsigned = seal(b"\n".join(head + lines) + b"\n", HashAlgorithm.SHA1)
    (legacy.repo / ".cvmfswhitelist").write_bytes(unsigned + sign_raw(master, hash_line))


def test_whitelist_lines_that_cvmfs_passes_over_are_passed_over(legacy) -> None:
    """cvmfs reads a fingerprint up to a space, tab or '#', without its colons, in any case, and skips a line
    that makes no hash: a whitelist written by hand that way verifies."""
    fingerprint = certificate_fingerprint(load_certificate((legacy.keys / f"{legacy.fqrn}.crt").read_bytes()))
    write_whitelist(legacy, [b"# release managers' certificate, renewed 2015", b"",
                             fingerprint.replace(":", "").lower().encode() + b"\t# the current one"])
    assert open_legacy(legacy).revision == 2


def test_whitelist_requiring_a_ca_chain_is_refused(legacy) -> None:
    """'Wcachain' makes cvmfs check the certificate against trusted CAs, which this reader cannot do."""
    fingerprint = certificate_fingerprint(load_certificate((legacy.keys / f"{legacy.fqrn}.crt").read_bytes()))
    write_whitelist(legacy, [fingerprint.encode()])
    assert open_legacy(legacy).revision == 2
    write_whitelist(legacy, [b"Wcachain", fingerprint.encode()])
    with pytest.raises(VerificationError, match="CA chain"):
        open_legacy(legacy)


def test_corrupted_object_is_never_output(legacy) -> None:
    path = legacy.repo / FOO_OBJECT
    stored = bytearray(path.read_bytes())
    path.write_bytes(zlib.compress(b"evil\n"))  # well-formed, but not the content the catalog names
    assert_refused(legacy, "cat", str(legacy.repo), "/foo", "--key", str(legacy.pub), message=b"does not match its content hash")
    stored[-1] ^= 0xFF
    path.write_bytes(bytes(stored))
    assert_refused(legacy, "cat", str(legacy.repo), "/hardlink_foo", "--key", str(legacy.pub), message=b"does not match its content hash")


def test_truncated_catalog_is_refused(legacy) -> None:
    path = legacy.repo / NESTED_CATALOG
    path.write_bytes(path.read_bytes()[:1000])
    assert_refused(legacy, "verify", str(legacy.repo), "--key", str(legacy.pub), message=b"does not match its content hash")
    assert_refused(legacy, "ls", str(legacy.repo), "/needs_migration", "--key", str(legacy.pub), message=b"does not match")


def test_missing_root_catalog_is_a_clear_error(legacy) -> None:
    (legacy.repo / "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC").unlink()
    assert_refused(legacy, "ls", str(legacy.repo), "--key", str(legacy.pub), message=b"is missing")


def test_catalog_swapped_for_another_valid_catalog_is_refused(legacy) -> None:
    """A well-formed catalog stored under the name of another fails its hash check."""
    other = legacy.repo / "data/71/9a178877dc6834924bcc4108a739c285eea4f9C"
    shutil.copyfile(other, legacy.repo / NESTED_CATALOG)
    with pytest.raises(VerificationError, match="does not match its content hash"):
        open_legacy(legacy).listdir("/needs_migration")
