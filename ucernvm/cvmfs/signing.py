"""The signing side of CernVM-FS: creating keys and certificates, signing manifests and whitelists.

- The manifest is signed with the repository certificate's key: RSASSA-PKCS1-v1_5 with SHA-1 over the
  ASCII hex hash line (``EVP_SignInit(EVP_sha1())``).
- The whitelist is signed with the master key by ``openssl pkeyutl -sign``: PKCS#1 v1.5 type-1 padding
  around the ASCII hex hash line, *without* a DigestInfo (``RSA_private_encrypt``).
Verification lives in ``trust.py``, free of the ``cryptography`` package that this module uses.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ucernvm.client.sinks import Inflating, Memory
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs import trust
from ucernvm.cvmfs.envelope import seal
from ucernvm.cvmfs.manifest import Manifest
from ucernvm.cvmfs.whitelist import Whitelist
from ucernvm.cvmfs.hashing import HashAlgorithm, ObjectType
from ucernvm.errors import ConfigError, VerificationError

RSA_KEY_BITS = 2048
CERTIFICATE_DAYS = 365


def load_private_key(path: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"private key {path} does not exist", "create keys with `ucernvm keygen`") from None
    except OSError as error:
        raise ConfigError(f"cannot read the private key {path}: {error.strerror}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{path} is not an RSA private key")
    return key


def sign_manifest_hash(private_key: rsa.RSAPrivateKey, hash_line: bytes) -> bytes:
    return private_key.sign(hash_line, padding.PKCS1v15(), hashes.SHA1())


def sign_raw(private_key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """PKCS#1 v1.5 type-1 signature of ``message`` itself, with no DigestInfo.

    Written out because ``cryptography`` only signs with a DigestInfo, while cvmfs's whitelist is
    ``openssl pkeyutl -sign`` over the raw hex line.
    """
    numbers = private_key.private_numbers()
    modulus = numbers.public_numbers.n
    size = (modulus.bit_length() + 7) // 8
    if len(message) > size - 11:
        raise ValueError("message too long for a PKCS#1 v1.5 signature")
    padded = b"\x00\x01" + b"\xff" * (size - 3 - len(message)) + b"\x00" + message
    # RSA with the Chinese remainder theorem, as OpenSSL does it.
    value = int.from_bytes(padded, "big")
    m1 = pow(value, numbers.dmp1, numbers.p)
    m2 = pow(value, numbers.dmq1, numbers.q)
    h = (numbers.iqmp * (m1 - m2)) % numbers.p
    return (m2 + h * numbers.q).to_bytes(size, "big")


def key_paths(keys_dir: str | os.PathLike[str], fqrn: str) -> dict[str, Path]:
    base = Path(keys_dir)
    return {suffix: base / f"{fqrn}.{suffix}" for suffix in ("masterkey", "pub", "key", "crt")}


def generate_repository_keys(fqrn: str, keys_dir: str | os.PathLike[str], *, overwrite: bool = False) -> dict[str, Path]:
    """Create the four key files of a repository as ``cvmfs_server mkfs`` does."""
    paths = key_paths(keys_dir, fqrn)
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise ConfigError(f"key files already exist: {', '.join(existing)}", "use --force to replace them")
    Path(keys_dir).mkdir(parents=True, exist_ok=True)
    master = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    signing = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    _write_private(paths["masterkey"], master)
    _write_private(paths["key"], signing)
    paths["pub"].write_bytes(
        master.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    paths["crt"].write_bytes(make_certificate(fqrn, signing).public_bytes(serialization.Encoding.PEM))
    return paths


def make_certificate(fqrn: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A self-signed certificate; cvmfs names it after the first 30 characters of the fqrn."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{fqrn[:30]} CernVM-FS Release Managers")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def sign_manifest(manifest: Manifest, key: rsa.RSAPrivateKey) -> bytes:
    """The complete ``.cvmfspublished`` bytes; the hash line uses the root catalog's algorithm."""
    hash_line, unsigned = seal(manifest.to_text(), manifest.root_hash.algorithm)
    return unsigned + sign_manifest_hash(key, hash_line)


def sign_whitelist(whitelist: Whitelist, master_key: rsa.RSAPrivateKey, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> bytes:
    hash_line, unsigned = seal(whitelist.to_text(), algorithm)
    return unsigned + sign_raw(master_key, hash_line)


def named_certificate(repo_dir: Path, manifest: Manifest) -> trust.Certificate:
    """The certificate the manifest names (its X line): the one whose fingerprint clients look up in the
    whitelist."""
    if manifest.certificate is None:
        raise VerificationError("the repository's manifest names no certificate (X line)")
    named = Memory()
    DirectorySource(repo_dir).fetch_object(manifest.certificate, ObjectType.CERTIFICATE, Inflating(named))
    return trust.load_certificate(named.value())
