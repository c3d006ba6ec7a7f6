"""Parsers of the CernVM-FS formats: exact on real data, specific errors on malformed input."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import zlib

import pytest

from ucernvm.cvmfs import xattrs
from ucernvm.cvmfs.catalog import Catalog, path_hash
from ucernvm.cvmfs.catalog_writer import CatalogWriter
from ucernvm.cvmfs.compression import Compression
from ucernvm.cvmfs.envelope import split_signed
from ucernvm.cvmfs.hashing import ContentHash, HashAlgorithm, ObjectType
from ucernvm.cvmfs.history import History
from ucernvm.cvmfs.manifest import Manifest, SignedManifest
from ucernvm.cvmfs.whitelist import Fingerprint, Whitelist
from ucernvm.errors import FormatError
from tests.helpers import PROJECT

SHA1_HEX = "6ed3d49a5c64f21f36936ab350d49aaf57585b9a"


@pytest.mark.parametrize(
    ("text", "algorithm", "path"),
    [
        (SHA1_HEX, HashAlgorithm.SHA1, "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC"),
        (SHA1_HEX + "-rmd160", HashAlgorithm.RMD160, "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9a-rmd160C"),
        (SHA1_HEX + "-shake128", HashAlgorithm.SHAKE128, "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9a-shake128C"),
    ],
)
def test_content_hash_spellings(text: str, algorithm: HashAlgorithm, path: str) -> None:
    parsed = ContentHash.parse(text)
    assert parsed.algorithm is algorithm
    assert parsed.hex == text
    assert parsed.object_path(ObjectType.CATALOG) == path


@pytest.mark.parametrize(
    "text", ["", SHA1_HEX[:-1], SHA1_HEX + "0", SHA1_HEX.upper(), "z" * 40, SHA1_HEX + "-md5", SHA1_HEX + "-sha1"]
)
def test_content_hash_rejects_malformed(text: str) -> None:
    with pytest.raises(FormatError):
        ContentHash.parse(text)


def test_hash_algorithms_digest_20_bytes() -> None:
    assert ContentHash.of(b"", HashAlgorithm.SHA1).hex == "da39a3ee5e6b4b0d3255bfef95601890afd80709"
    assert ContentHash.of(b"", HashAlgorithm.SHAKE128).hex == "7f9c2ba4e88f827d616045507605853ed73b8093-shake128"
    assert ContentHash.of(b"", HashAlgorithm.RMD160).hex == "9c1185a5c5e9fc54612808977ee8f548b2258d31-rmd160"
    assert HashAlgorithm.from_catalog_flags(512 | 4) is HashAlgorithm.SHAKE128


def test_small_inputs_are_hashed_without_loading_openssl() -> None:
    """A later boot hashes only small things (a certificate, signed lines, path keys): the interpreter's
    own implementations do, and OpenSSL's libcrypto is loaded for the first input in bulk only. Both
    give the same digests."""
    program = (
        "import json, sys\n"
        "from ucernvm.cvmfs.catalog import path_hash\n"
        "from ucernvm.cvmfs.hashing import SMALL, HashAlgorithm\n"
        "data = bytes(range(256)) * (SMALL // 256)\n"
        "small = {f'{a.name}:{n}': a.digest(data[:n]).hex() for a in (HashAlgorithm.SHA1, HashAlgorithm.SHAKE128)"
        " for n in (0, 1000, SMALL)}\n"
        "keys = path_hash('/usr/bin/bash')\n"
        "assert '_hashlib' not in sys.modules, 'a small input loaded OpenSSL'\n"
        "from types import SimpleNamespace\n"
        "from ucernvm.boot.snapshot import load_bulk_hashes\n"
        "load_bulk_hashes(SimpleNamespace(scratch_fresh=False))  # a later boot\n"
        "assert '_hashlib' not in sys.modules, 'a later boot loaded OpenSSL ahead'\n"
        "bulk = HashAlgorithm.SHA1.digest(data + data)\n"
        "print(json.dumps({'small': small, 'keys': keys, 'bulk': bulk.hex(),"
        " 'openssl': '_hashlib' in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    data = bytes(range(256)) * 256
    for size in (0, 1000, len(data)):
        assert seen["small"][f"SHA1:{size}"] == hashlib.sha1(data[:size]).hexdigest()
        assert seen["small"][f"SHAKE128:{size}"] == hashlib.shake_128(data[:size]).hexdigest(20)
    assert tuple(seen["keys"]) == path_hash("/usr/bin/bash")
    assert seen["openssl"] is True and seen["bulk"] == hashlib.sha1(data + data).hexdigest()


def test_a_first_boot_loads_openssl_ahead_for_its_downloads() -> None:
    program = ("import sys\nfrom types import SimpleNamespace\nfrom ucernvm.boot.snapshot import load_bulk_hashes\n"
               "load_bulk_hashes(SimpleNamespace(scratch_fresh=True))\nprint('_hashlib' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_empty_file_object_is_the_cvmfs_one() -> None:
    stored = Compression.CVMFS.compress(b"")
    assert stored.hex() == "789c030000000001"
    assert ContentHash.of(stored).hex == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"


def test_fixture_objects_recompress_byte_for_byte(legacy_pristine) -> None:
    """cvmfs names objects by the SHA-1 of zlib level-6 output; every fixture object reproduces."""
    objects = [path for path in (legacy_pristine.repo / "data").glob("*/*") if path.is_file()]
    assert len(objects) == 17
    for path in objects:
        stored = path.read_bytes()
        assert ContentHash.of(stored).hex == path.parent.name + path.name.rstrip("CHX")
        assert Compression.CVMFS.compress(zlib.decompress(stored)) == stored


@pytest.mark.parametrize("compression", list(Compression))
def test_every_encoder_inflates_with_plain_zlib(compression: Compression) -> None:
    data = b"CernVM-FS " * 10000 + bytes(range(256))
    assert zlib.decompress(compression.compress(data)) == data


def test_manifest_round_trip_of_fixture(legacy_pristine) -> None:
    data = (legacy_pristine.repo / ".cvmfspublished").read_bytes()
    signed = SignedManifest.parse(data)
    manifest = signed.manifest
    assert manifest.root_hash.hex == SHA1_HEX
    assert (manifest.revision, manifest.ttl, manifest.root_catalog_size) == (2, 900, 14336)
    assert manifest.fqrn == "legacy_aufs.cern.ch"
    assert manifest.timestamp == 1445428515
    assert manifest.to_text() == signed.envelope.text
    assert len(signed.envelope.signature) == 256


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"B14336\nRd41d8cd98f00b204e9800998ecf8427e\nD240\nS2\n", "missing mandatory field"),
        (b"C" + SHA1_HEX.encode() + b"\nRx\nDforever\nS2\n", "not a number"),
        (b"C1234\nRx\nD240\nS2\n", "malformed content hash"),
        (b"C" + SHA1_HEX.encode() + b"\nRx\nD240\nS-1\n", "negative"),
        ("Cé\nR\nD1\nS1\n".encode(), "not ASCII"),
    ],
)
def test_manifest_rejects_malformed_fields(text: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Manifest.parse(text)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"C1\nS1\n", "no '--' separator"), (b"C1\n--\nabc", "truncated"), (b"C1\n--\nabc\n", "signature is missing")],
)
def test_envelope_rejects_unsigned_text(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        split_signed(data, "manifest")


def test_whitelist_of_fixture(legacy_pristine) -> None:
    data = (legacy_pristine.repo / ".cvmfswhitelist").read_bytes()
    whitelist = Whitelist.parse(split_signed(data, "whitelist").text)
    assert whitelist.fqrn == "legacy_aufs.cern.ch"
    assert whitelist.expires.isoformat() == "2015-11-20T11:55:13+00:00"
    assert whitelist.fingerprints[0].text.startswith("93:AB:A3:C4")
    assert whitelist.to_text() == split_signed(data, "whitelist").text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"2015\nE20151120115513\nNx\nAA\n", "creation time"),
        (b"20151021115513\nE20151120115513\n", "too short"),
        (b"20151021115513\nX20151120115513\nNx\nAA\n", "expiry"),
        (b"20151021115513\nE2015112011551\nNx\n" + b":".join([b"AA"] * 20) + b"\n", "not YYYYMMDDHHMMSS"),
        (b"20151021115513\nE20151120115513\nx\nAA\n", "repository name"),
        (b"20151021115513\nE20151120115513\nNx\n--\n", "no certificate fingerprint"),
        (b"20151021115513\nE20151120115513\nNx\nAA:BB\n", "no certificate fingerprint"),
        (b"20151021115513\nE20151120115513\nNx\nVpkcs7\n\n", "no certificate fingerprint"),
    ],
)
def test_whitelist_rejects_malformed_lines(text: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Whitelist.parse(text)


def test_whitelist_fingerprint_comments_and_algorithms() -> None:
    pairs = ":".join(["0A"] * 20)
    assert Fingerprint.parse(pairs + " # signing key 2025").text == pairs
    assert Fingerprint.parse(pairs.lower() + "-shake128").algorithm is HashAlgorithm.SHAKE128
    assert Fingerprint.parse("0a" * 20 + "#no space before the comment").text == pairs
    assert Fingerprint.parse("# a comment line") is None and Fingerprint.parse("AA:BB") is None


def test_xattr_blob_round_trip_and_damage() -> None:
    values = {"user.b": b"2", "user.a": b"\x00binary\xff", "security.capability": b"\x01\x00"}
    blob = xattrs.encode(values)
    assert blob is not None and blob[:2] == bytes([1, 3])
    assert blob[2:4] == bytes([len("security.capability"), 2])  # sorted by key
    assert xattrs.decode(blob) == values
    assert xattrs.encode({}) is None
    with pytest.raises(FormatError, match="truncated"):
        xattrs.decode(blob[:-1])
    with pytest.raises(FormatError, match="bad header"):
        xattrs.decode(b"\x03\x00")


def test_xattr_blobs_are_written_in_version_2_only_for_a_value_longer_than_255_bytes() -> None:
    """As cvmfs 2.14's XattrList::Serialize: u16 little-endian value lengths once one value needs them."""
    small = xattrs.encode({"user.a": b"x" * 255})
    assert small == bytes([1, 1, 6, 255]) + b"user.a" + b"x" * 255
    big = xattrs.encode({"user.b": b"y", "user.a": b"x" * 1000})
    assert big == bytes([2, 2, 6]) + (1000).to_bytes(2, "little") + b"user.a" + b"x" * 1000 + bytes([6, 1, 0]) + b"user.b" + b"y"
    assert xattrs.decode(big) == {"user.a": b"x" * 1000, "user.b": b"y"}
    assert xattrs.decode(xattrs.encode({"user.c": b"z" * 65535})) == {"user.c": b"z" * 65535}
    for key, value in (("user.c", b"z" * 65536), ("u" * 256, b""), ("", b"v")):
        with pytest.raises(FormatError, match="extended attribute"):
            xattrs.encode({key: value})


def test_xattr_blobs_of_cvmfs_2_14_with_values_longer_than_255_bytes_are_read() -> None:
    """Version 2, which cvmfs 2.14 writes when a value is longer than 255 bytes: u16 little-endian lengths."""
    acl = bytes(range(256)) * 3
    blob = bytes([2, 2, 10]) + len(acl).to_bytes(2, "little") + b"system.acl" + acl
    blob += bytes([6, 1, 0]) + b"user.a" + b"x"
    assert xattrs.decode(blob) == {"system.acl": acl, "user.a": b"x"}
    with pytest.raises(FormatError, match="truncated"):
        xattrs.decode(blob[:14])


def test_path_hash_of_root_matches_cvmfs() -> None:
    assert path_hash("") == (338333539836370388, 9098107892288553193)


@pytest.mark.parametrize("data", [b"", b"\x00", b"SQLite format 3\x00" + b"\x00" * 100, b"not a database at all" * 50])
def test_catalog_rejects_garbage(data: bytes) -> None:
    with pytest.raises(FormatError):
        Catalog.from_bytes(data)


@pytest.mark.parametrize(("schema", "refusal"), [
    ("2.5", None), ("2.4", None), ("2.3", "cvmfs clients refuse it too"), ("2.0", "cvmfs clients refuse it too"),
    ("2.6", "a cvmfs newer than 2.12 wrote it"),
    ("1.0", "a schema 1.x catalog belongs to a cvmfs 2.0 repository; `cvmfs_server import -l` migrates it"),
])
def test_catalog_schemas_are_those_cvmfs_reads_and_others_are_refused_saying_why(
        legacy_pristine, schema: str, refusal: str | None) -> None:
    """cvmfs 2.12 reads 2.4 and 2.5, and 1.x: the catalogs of cvmfs 2.0 repositories, which are not read here;
    the refusal says what was found, what is read, and where the catalog comes from."""
    stored = (legacy_pristine.repo / "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC").read_bytes()
    database = sqlite3.connect(":memory:")
    database.deserialize(zlib.decompress(stored))
    database.execute("UPDATE properties SET value=? WHERE key='schema'", (schema,))
    database.commit()
    if refusal is None:
        assert Catalog.from_bytes(database.serialize()).lookup("/foo").size == 4
    else:
        with pytest.raises(FormatError) as refused:
            Catalog.from_bytes(database.serialize())
        assert refused.value.message == f"catalog schema {schema} is not supported: ucernvm reads schemas 2.4 and 2.5"
        assert refused.value.hint.startswith(refusal)


def test_history_of_fixture(legacy_pristine) -> None:
    stored = (legacy_pristine.repo / "data/36/5d5083b27d67e2caeff6d66e5fe3f2d104a6bdH").read_bytes()
    history = History.from_bytes(zlib.decompress(stored))
    assert history.fqrn == "legacy_aufs.cern.ch"
    trunk = history.find("trunk")
    assert trunk is not None and trunk.root_hash.hex == SHA1_HEX and trunk.revision == 2
    with pytest.raises(FormatError):
        History.from_bytes(b"garbage" * 100)


def test_catalogs_and_history_databases_have_the_page_size_cvmfs_server_writes(legacy_pristine) -> None:
    """cvmfs's bundled SQLite is built with 1024-byte pages, as the fixture's catalog and history show; an
    empty catalog written here is then 16 KiB, where SQLite's default 4096 made it 56 KiB."""
    def page_size(database: bytes) -> int:
        return int.from_bytes(database[16:18], "big")  # the SQLite header's page size

    fixture = {path.name[-1]: zlib.decompress(path.read_bytes()) for path in (legacy_pristine.repo / "data").glob("*/*")
               if path.name[-1] in "CH"}
    assert page_size(fixture["C"]) == page_size(fixture["H"]) == 1024
    empty = CatalogWriter("", 240).finish(1, 0, None)
    assert page_size(empty) == 1024 and len(empty) == 16 * 1024
    assert Catalog.from_bytes(empty).lookup("") is None
    assert page_size(History.create("x.cern.ch").to_bytes()) == 1024
