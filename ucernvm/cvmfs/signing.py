"""Keys, certificates and the two signature schemes of CernVM-FS.

- The manifest is signed with the repository certificate's key: RSASSA-PKCS1-v1_5 with SHA-1 over the
  ASCII hex hash line (``EVP_SignInit(EVP_sha1())``).
- The whitelist is signed with the master key by ``openssl pkeyutl -sign``: PKCS#1 v1.5 type-1 padding
  around the ASCII hex hash line, *without* a DigestInfo (``RSA_private_encrypt``).
A client trusts only master public keys (``<fqrn>.pub``); everything else is reached from them.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from ucernvm.cvmfs.hashing import HashAlgorithm
from ucernvm.errors import ConfigError, FormatError

RSA_KEY_BITS = 2048
CERTIFICATE_DAYS = 365


def load_master_keys(path: str | os.PathLike[str]) -> list[rsa.RSAPublicKey]:
    """Load a master public key file, or every ``*.pub`` in a directory (as ``CVMFS_KEYS_DIR``)."""
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


def load_public_key(pem: bytes, origin: str = "public key") -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ConfigError(f"{origin} is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError(f"{origin} is not an RSA public key")
    return key


def load_private_key(path: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise ConfigError(f"private key {path} does not exist", "create keys with `ucernvm keygen`") from None
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"{path} is not an RSA private key")
    return key


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise FormatError("the repository certificate is not a PEM X.509 certificate") from None


def certificate_fingerprint(certificate: x509.Certificate, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> str:
    """The whitelist spelling: upper-case hex pairs joined by colons, plus ``-SHAKE128`` etc."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    digest = algorithm.digest(der).hex().upper()
    pairs = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    return pairs + algorithm.id_suffix.upper()


def sign_manifest_hash(private_key: rsa.RSAPrivateKey, hash_line: bytes) -> bytes:
    return private_key.sign(hash_line, padding.PKCS1v15(), hashes.SHA1())


def manifest_signature_valid(certificate: x509.Certificate, hash_line: bytes, signature: bytes) -> bool:
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        return False
    try:
        public_key.verify(signature, hash_line, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature:
        return False
    return True


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


def raw_signature_valid(public_keys: list[rsa.RSAPublicKey], message: bytes, signature: bytes) -> bool:
    """True when any of the master keys recovers exactly ``message`` from the signature."""
    for key in public_keys:
        try:
            if key.recover_data_from_signature(signature, padding.PKCS1v15(), None) == message:
                return True
        except (InvalidSignature, ValueError):
            continue
    return False


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
