"""Signature verification without the cryptography package, cross-checked against it."""

from __future__ import annotations

import os
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from ucernvm.cvmfs import signing, trust
from ucernvm.cvmfs.hashing import HashAlgorithm
from ucernvm.errors import ConfigError, FormatError


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return signing.generate_repository_keys("trust.cern.ch", tmp_path_factory.mktemp("k"))


def test_keys_and_certificates_parse_like_cryptography(keys: dict) -> None:
    master = signing.load_private_key(keys["masterkey"])
    numbers = master.public_key().public_numbers()
    assert trust.load_master_keys(keys["pub"]) == [trust.PublicKey(numbers.n, numbers.e)]
    pkcs1 = master.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert trust.load_public_key(pkcs1) == trust.PublicKey(numbers.n, numbers.e)
    spki = master.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert trust.load_public_key(pkcs1).pem().encode() == spki  # written back as OpenSSL writes it
    certificate = trust.load_certificate(keys["crt"].read_bytes())
    signer = signing.load_private_key(keys["key"]).public_key().public_numbers()
    assert certificate.public_key == trust.PublicKey(signer.n, signer.e)
    fingerprint = trust.certificate_fingerprint(certificate)
    assert len(fingerprint.split(":")) == 20 and fingerprint == fingerprint.upper()
    assert trust.certificate_fingerprint(certificate, HashAlgorithm.SHAKE128).endswith("-SHAKE128")


def test_signatures_made_by_cryptography_verify_and_tampering_fails(keys: dict) -> None:
    signer = signing.load_private_key(keys["key"])
    master = signing.load_private_key(keys["masterkey"])
    certificate = trust.load_certificate(keys["crt"].read_bytes())
    masters = trust.load_master_keys(keys["pub"])
    for _ in range(20):
        line = os.urandom(20).hex().encode()
        manifest_signature = signing.sign_manifest_hash(signer, line)
        assert trust.manifest_signature_valid(certificate, line, manifest_signature)
        altered = line[:-1] + (b"1" if line.endswith(b"0") else b"0")
        assert not trust.manifest_signature_valid(certificate, altered, manifest_signature)
        flipped = manifest_signature[:-1] + bytes([manifest_signature[-1] ^ 1])
        assert not trust.manifest_signature_valid(certificate, line, flipped)
        raw = signing.sign_raw(master, line)
        assert trust.raw_signature_valid(masters, line, raw)
        assert not trust.raw_signature_valid(masters, line, bytes(len(raw)))
        assert not trust.raw_signature_valid(masters, line, raw + b"\x00")
        # A signature by the wrong key or under the other scheme is refused.
        assert not trust.raw_signature_valid(masters, line, manifest_signature)
        assert not trust.manifest_signature_valid(certificate, line, raw)


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"-----BEGIN PUBLIC KEY-----\n!!!not base64!!!\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END PUBLIC KEY-----\n",
        b"-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
    ],
)
def test_garbage_public_keys_are_clear_errors(pem: bytes) -> None:
    with pytest.raises(ConfigError):
        trust.load_public_key(pem)


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x02\x01\x00", os.urandom(300)])
def test_garbage_certificates_are_format_errors(der: bytes) -> None:
    import base64

    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(FormatError):
        trust.load_certificate(pem)


def test_resign_lists_a_certificate_other_than_the_manifests_beside_it(legacy, tmp_path) -> None:
    """A certificate re-issued for the same key would sign alike, but clients look the fingerprint of the
    manifest's own (its X line) up in the whitelist: resign lists the other beside it, so that the revision
    served keeps verifying, and the next revision may be signed with the other."""
    from ucernvm.cvmfs.publisher import resign

    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(legacy.keys / f"{legacy.fqrn}.masterkey", keys)
    reissued = signing.make_certificate(legacy.fqrn, signing.load_private_key(legacy.keys / f"{legacy.fqrn}.key"))
    (keys / f"{legacy.fqrn}.crt").write_bytes(reissued.public_bytes(serialization.Encoding.PEM))
    named = trust.load_certificate((legacy.keys / f"{legacy.fqrn}.crt").read_bytes())
    listed = resign(str(legacy.repo), legacy.fqrn, str(keys)).whitelist
    assert [fingerprint.text for fingerprint in listed.fingerprints] == [
        trust.certificate_fingerprint(named), trust.certificate_fingerprint(trust.load_certificate(
            (keys / f"{legacy.fqrn}.crt").read_bytes()))]
    shutil.copy(legacy.keys / f"{legacy.fqrn}.crt", keys)  # the manifest's own: listed alone
    assert len(resign(str(legacy.repo), legacy.fqrn, str(keys)).whitelist.fingerprints) == 1
