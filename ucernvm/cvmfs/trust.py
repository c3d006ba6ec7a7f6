"""Verifying what a repository signed: master public keys, the certificate, both RSA signature schemes.

Written without the ``cryptography`` package on purpose: verification is what the boot image does, and
that package costs the image 12 MB and a second and a half of imports under emulation, while checking an
RSA PKCS#1 v1.5 signature is one modular exponentiation and a byte comparison. Parsing is strict — every
DER length is checked and anything unexpected is a FormatError — and cannot weaken the chain: a
certificate is trusted only when the SHA-1 of its exact DER bytes is on the whitelist. Signing (the
publisher) stays with ``cryptography``, in ``signing.py``.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from ucernvm.cvmfs.hashing import HashAlgorithm
from ucernvm.errors import ConfigError, FormatError
from ucernvm.records import NamedTuple

_PEM = re.compile(rb"-----BEGIN ([A-Z ]+)-----\s*(.*?)\s*-----END \1-----", re.DOTALL)
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # OID 1.2.840.113549.1.1.1
# DER of DigestInfo(sha1) without the digest, the fixed prefix of EMSA-PKCS1-v1_5 with SHA-1 (RFC 8017).
_SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


class PublicKey(NamedTuple):
    modulus: int
    exponent: int

    @property
    def size(self) -> int:
        return (self.modulus.bit_length() + 7) // 8

    def pem(self) -> str:
        """The key as a PEM ``PUBLIC KEY`` (X.509 SubjectPublicKeyInfo), as cvmfs and OpenSSL write it."""
        rsa_key = _der(0x30, _der_integer(self.modulus) + _der_integer(self.exponent))
        info = _der(0x30, _der(0x30, _der(0x06, _RSA_ENCRYPTION) + _der(0x05, b"")) + _der(0x03, b"\0" + rsa_key))
        text = base64.b64encode(info).decode()
        lines = [text[start:start + 64] for start in range(0, len(text), 64)]
        return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"


class Certificate(NamedTuple):
    der: bytes
    public_key: PublicKey


def _read(data: bytes, offset: int, tag: int) -> tuple[bytes, int]:
    """One DER element with ``tag`` at ``offset``: its content and the offset after it."""
    if offset + 2 > len(data) or data[offset] != tag:
        raise FormatError(f"malformed DER: expected tag {tag:#x} at byte {offset}")
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise FormatError("malformed DER: bad length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise FormatError("malformed DER: element runs past the end")
    return data[start:end], end


def _der(tag: int, content: bytes) -> bytes:
    """One DER element (the inverse of _read)."""
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _der_integer(value: int) -> bytes:
    """A positive INTEGER: big-endian, with a leading zero byte where the top bit is set."""
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _skip(data: bytes, offset: int) -> int:
    """The offset after the element at ``offset``, whatever its tag."""
    if offset >= len(data):
        raise FormatError("malformed DER: truncated")
    return _read(data, offset, data[offset])[1]


def _integer(data: bytes, offset: int) -> tuple[int, int]:
    content, end = _read(data, offset, 0x02)
    if not content or content[0] & 0x80:
        raise FormatError("malformed DER: an RSA number must be a positive integer")
    return int.from_bytes(content, "big"), end


def _rsa_public_key(der: bytes) -> PublicKey:
    """PKCS#1 RSAPublicKey: SEQUENCE { modulus INTEGER, publicExponent INTEGER }."""
    body, _ = _read(der, 0, 0x30)
    modulus, offset = _integer(body, 0)
    exponent, _ = _integer(body, offset)
    if modulus.bit_length() < 1024 or exponent < 3:
        raise FormatError("unusable RSA public key (modulus under 1024 bits or exponent under 3)")
    return PublicKey(modulus, exponent)


def _subject_public_key_info(der: bytes) -> PublicKey:
    """SEQUENCE { AlgorithmIdentifier { rsaEncryption, NULL }, BIT STRING { RSAPublicKey } }."""
    body, _ = _read(der, 0, 0x30)
    algorithm, offset = _read(body, 0, 0x30)
    oid, _ = _read(algorithm, 0, 0x06)
    if oid != _RSA_ENCRYPTION:
        raise FormatError("not an RSA public key")
    bits, _ = _read(body, offset, 0x03)
    if not bits or bits[0] != 0:
        raise FormatError("malformed DER: bad BIT STRING")
    return _rsa_public_key(bits[1:])


def _pem_blocks(pem: bytes) -> list[tuple[str, bytes]]:
    blocks = []
    for label, text in _PEM.findall(pem):
        try:
            blocks.append((label.decode(), base64.b64decode(b"".join(text.split()), validate=True)))
        except binascii.Error:
            raise FormatError(f"PEM block {label.decode()!r} is not valid base64") from None
    return blocks


def load_public_key(pem: bytes, origin: str = "public key") -> PublicKey:
    """A PEM ``PUBLIC KEY`` (X.509 SubjectPublicKeyInfo) or ``RSA PUBLIC KEY`` (PKCS#1)."""
    try:
        blocks = _pem_blocks(pem)
    except FormatError as error:
        raise ConfigError(f"{origin}: {error.message}") from None
    for label, der in blocks:
        try:
            if label == "PUBLIC KEY":
                return _subject_public_key_info(der)
            if label == "RSA PUBLIC KEY":
                return _rsa_public_key(der)
        except FormatError as error:
            raise ConfigError(f"{origin} is not a usable RSA public key: {error.message}") from None
    raise ConfigError(f"{origin} is not a PEM public key")


def load_master_keys(path: str | os.PathLike[str]) -> list[PublicKey]:
    """A master public key file, or every ``*.pub`` in a directory (as ``CVMFS_KEYS_DIR``)."""
    location = Path(path)
    if location.is_dir():
        files = sorted(location.glob("*.pub"))
        if not files:
            raise ConfigError(f"no *.pub master key in {location}", "pass the repository's <fqrn>.pub")
    elif location.is_file():
        files = [location]
    else:
        raise ConfigError(f"master key {location} does not exist", "pass the repository's <fqrn>.pub")
    return [load_public_key(file.read_bytes(), str(file)) for file in files]


def load_certificate(pem: bytes) -> Certificate:
    """The repository certificate (PEM X.509): its DER bytes and its RSA public key."""
    blocks = [der for label, der in _pem_blocks(pem) if label == "CERTIFICATE"]
    if not blocks:
        raise FormatError("the repository certificate is not a PEM X.509 certificate")
    der = blocks[0]
    certificate, _ = _read(der, 0, 0x30)
    tbs, _ = _read(certificate, 0, 0x30)
    offset = 0
    if tbs[:1] == b"\xa0":  # [0] version
        offset = _skip(tbs, offset)
    for _ in range(5):  # serialNumber, signature algorithm, issuer, validity, subject
        offset = _skip(tbs, offset)
    if offset >= len(tbs):
        raise FormatError("malformed certificate: no public key")
    key_end = _skip(tbs, offset)
    return Certificate(der, _subject_public_key_info(tbs[offset:key_end]))


def certificate_fingerprint(certificate: Certificate, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> str:
    """The whitelist spelling of the certificate's hash (see ``fingerprint_text``)."""
    return fingerprint_text(algorithm, algorithm.digest(certificate.der))


def fingerprint_text(algorithm: HashAlgorithm, digest: bytes) -> str:
    """Upper-case hex pairs joined by colons, plus ``-SHAKE128`` etc."""
    text = digest.hex().upper()
    return ":".join(text[i : i + 2] for i in range(0, len(text), 2)) + algorithm.id_suffix.upper()


def _recover(key: PublicKey, signature: bytes) -> bytes | None:
    """The encoded message inside a signature: ``signature ^ e mod n``, as many bytes as the modulus."""
    if len(signature) != key.size:
        return None
    value = int.from_bytes(signature, "big")
    if value >= key.modulus:
        return None
    return pow(value, key.exponent, key.modulus).to_bytes(key.size, "big")


def _padded(payload: bytes, size: int) -> bytes | None:
    """EMSA-PKCS1-v1_5 type 1: 00 01 FF..FF 00 payload (at least eight FF)."""
    if len(payload) > size - 11:
        return None
    return b"\x00\x01" + b"\xff" * (size - 3 - len(payload)) + b"\x00" + payload


def manifest_signature_valid(certificate: Certificate, hash_line: bytes, signature: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-1 over the manifest's hash line (``EVP_SignInit(EVP_sha1())``)."""
    key = certificate.public_key
    expected = _padded(_SHA1_DIGEST_INFO + HashAlgorithm.SHA1.digest(hash_line), key.size)
    return expected is not None and _recover(key, signature) == expected


def raw_signature_valid(keys: list[PublicKey], message: bytes, signature: bytes) -> bool:
    """PKCS#1 v1.5 type-1 padding around ``message`` itself, no DigestInfo (``openssl pkeyutl -sign``)."""
    for key in keys:
        expected = _padded(message, key.size)
        if expected is not None and _recover(key, signature) == expected:
            return True
    return False
