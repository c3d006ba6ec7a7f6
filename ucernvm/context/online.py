"""CernVM Online client: the context that a 6-digit pairing PIN stands for.

What the real client (``cernvm-online.sh``) and server (``cvmo``) do, byte for byte:

- a PIN is 6 digits ``S S S S R E``; spaces and dashes typed with it are dropped. An odd last digit
  ``E`` marks an encrypted context, which needs its secret;
- ``GET <service>/api/context?uuid=<machine>&ver=<version>&pin=<PIN>&checksum=<sha1>`` where
  ``checksum = sha1(SALT + secret + SALT)`` and ``SALT`` is the 2-digit sum of the first 4 digits
  (the server salts with the context UUID's first 4 digits; its PINs are made so the sums agree);
- the reply is ``text/plain``: an error token on the first line, or ``KEY=value`` lines with
  ``EC2_USER_DATA`` (base64 user-data), ``VM_CONTEXT_UUID``, ``VM_CONTEXT_NAME`` and optionally
  ``ROOT_PUBKEY`` (base64), or, for an encrypted context, ``ENCRYPTED:<base64>`` of what
  ``openssl enc -aes-256-cfb8 -md md5 -k <secret>`` writes, around those same lines.

This module must run on its own (standard library, and for encrypted contexts the libcrypto that
Python's ssl module links): the boot loader copies it, with ``ucernvm/errors.py``, into the booted OS
for the ``#<PIN>`` login.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid as uuidlib
from dataclasses import dataclass, field

from ucernvm.context.defaults import SERVICE_URL
from ucernvm.errors import ContextError
from ucernvm.utc import utc_time

CONTEXT_PATH = "/api/context"
TIMEOUT = 10.0  # the real client's curl --connect-timeout
MAX_REPLY = 4 * 1024 * 1024  # a rendered context is a few KB; anything this big is not one
PIN_DIGITS = 6

_KEY_VALUE = re.compile(r"^([A-Za-z0-9_-]+)=(.*)$")  # the real client's parse_context pattern
_SALTED = b"Salted__"

# The error tokens the service answers with, and what they mean for the user.
ERRORS = {
    "invalid-checksum": ("CernVM Online refused the secret for PIN {pin} (invalid-checksum)",
                         "the secret is the password set on the encrypted context; type it exactly"),
    "not-found": ("CernVM Online has no context for PIN {pin} (not-found): it is unknown, has expired, "
                  "or was used already", "a PIN lasts 5 minutes and pairs one machine: request a new one"),
    "not-authorized": ("CernVM Online refused to pair this machine (not-authorized): it is registered to "
                       "another account", "pair it from the account that paired it first, or remove it there"),
    "invalid-request": ("CernVM Online rejected the request (invalid-request)",
                        "check the service URL; the PIN is 6 digits"),
}


@dataclass(frozen=True)
class OnlineContext:
    """A decoded context: the user-data for the machine and what identifies the context."""

    user_data: bytes
    context_uuid: str = ""
    name: str = ""
    root_pubkey: str = ""  # an OpenSSH public key line for root, or ""
    fields: dict[str, str] = field(default_factory=dict)  # every KEY=value line, raw


# --- PINs, salts and checksums ------------------------------------------------------------------


def normalize_pin(text: str) -> str:
    """The 6-digit PIN in ``text`` (spaces and dashes dropped, as the pairing console does)."""
    pin = re.sub(r"[\s-]", "", text)
    if len(pin) != PIN_DIGITS or not pin.isascii() or not pin.isdigit():
        raise ContextError(f"{text.strip()!r} is not a CernVM Online PIN",
                           "a PIN is 6 digits, e.g. 123456 or 123-456")
    return pin


def needs_secret(pin: str) -> bool:
    """An odd last digit marks a PIN of an encrypted context."""
    return pin[-1] in "13579"


def salt(text: str) -> str:
    """``%02d`` of the sum of the first 4 digits in ``text``, 1, 2, 3, 4 standing in for missing ones.

    The client applies it to the PIN, the server to the context UUID (``get_uuid_salt``).
    """
    digits = [int(c) for c in text if c in "0123456789"][:4]
    digits += [1, 2, 3, 4][len(digits):]
    return "%02d" % sum(digits)


def checksum(salt_source: str, secret: str) -> str:
    """``sha1(SALT + secret + SALT)``, hex: what the client sends and the server stores as the key."""
    pepper = salt(salt_source)
    return hashlib.sha1(f"{pepper}{secret}{pepper}".encode()).hexdigest()


# --- OpenSSL "enc" format -----------------------------------------------------------------------


def evp_bytes_to_key(password: bytes, salt_bytes: bytes, key_length: int = 32,
                     iv_length: int = 16) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey with MD5 and one iteration (``openssl enc -md md5 -k``).

    Written out because it is these few lines of hashlib: libraries offer only modern KDFs.
    """
    derived = b""
    block = b""
    while len(derived) < key_length + iv_length:
        block = hashlib.md5(block + password + salt_bytes).digest()
        derived += block
    return derived[:key_length], derived[key_length:key_length + iv_length]


def _aes_256_cfb8(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    """AES-256-CFB8 by OpenSSL's libcrypto, called through ctypes.

    Not through the ``cryptography`` package: its compiled part (14 MB) is larger than the whole boot
    image, where an encrypted PIN is opened, and that image already holds libcrypto for hashlib and ssl.
    """
    import ctypes  # only encrypted contexts need it

    lib = _libcrypto()
    context = lib.EVP_CIPHER_CTX_new()
    if not context:
        raise ContextError("OpenSSL's libcrypto cannot make a cipher context")
    try:
        out = ctypes.create_string_buffer(len(data) + 32)  # CFB8 is a stream mode: as long as its input
        written, final = ctypes.c_int(0), ctypes.c_int(0)
        done = (lib.EVP_CipherInit_ex(context, lib.EVP_aes_256_cfb8(), None, key, iv, int(encrypt)) == 1
                and lib.EVP_CipherUpdate(context, out, ctypes.byref(written), data, len(data)) == 1
                and lib.EVP_CipherFinal_ex(context, ctypes.addressof(out) + written.value, ctypes.byref(final)) == 1)
        if not done:
            raise ContextError("OpenSSL's libcrypto refused AES-256-CFB8")
        return out.raw[: written.value + final.value]
    finally:
        lib.EVP_CIPHER_CTX_free(context)


def _libcrypto():  # type: ignore[no-untyped-def]
    """The libcrypto that Python's ssl module links (already in the process), with the EVP calls typed."""
    import ctypes

    for name in ("libcrypto.so.3", "libcrypto.so.1.1"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise ContextError("encrypted CernVM Online contexts need OpenSSL's libcrypto", "install libssl3")
    pointer, integer = ctypes.c_void_p, ctypes.c_int
    lib.EVP_CIPHER_CTX_new.restype = pointer
    lib.EVP_CIPHER_CTX_free.argtypes = (pointer,)
    lib.EVP_aes_256_cfb8.restype = pointer
    lib.EVP_CipherInit_ex.argtypes = (pointer, pointer, pointer, ctypes.c_char_p, ctypes.c_char_p, integer)
    lib.EVP_CipherUpdate.argtypes = (pointer, pointer, ctypes.POINTER(integer), ctypes.c_char_p, integer)
    lib.EVP_CipherFinal_ex.argtypes = (pointer, pointer, ctypes.POINTER(integer))
    return lib


def encrypt(plain: bytes, secret: str, salt_bytes: bytes | None = None) -> bytes:
    """``Salted__`` + salt + AES-256-CFB8 ciphertext, as ``openssl enc -aes-256-cfb8 -md md5 -k``."""
    salt_bytes = os.urandom(8) if salt_bytes is None else salt_bytes
    key, iv = evp_bytes_to_key(secret.encode(), salt_bytes)
    return _SALTED + salt_bytes + _aes_256_cfb8(key, iv, plain, encrypt=True)


def decrypt(data: bytes, secret: str) -> bytes:
    """The plaintext of OpenSSL ``enc`` output made with AES-256-CFB8, MD5 and ``secret``."""
    if not data.startswith(_SALTED) or len(data) < 16:
        raise ContextError("the encrypted CernVM Online context has no 'Salted__' header",
                           "the service sent something that is not an OpenSSL-encrypted context")
    key, iv = evp_bytes_to_key(secret.encode(), data[8:16])
    return _aes_256_cfb8(key, iv, data[16:], encrypt=False)


# --- the reply ----------------------------------------------------------------------------------


def _text(body: bytes, what: str) -> str:
    if b"\x00" in body:
        raise ContextError(f"{what} contains NUL bytes: it is not a CernVM Online context")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ContextError(f"{what} is not UTF-8 text: it is not a CernVM Online context") from None


# What the real client's ``base64 -di`` (GNU coreutils) keeps: the alphabet and the padding sign.
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
# Whole quanta, the last of a run possibly padded; GNU decodes run after run ("YQ==YQ==" is "aa").
_RUN = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _b64(value: str, what: str) -> bytes:
    """``value`` decoded as ``base64 -di`` does: characters outside the alphabet (line breaks, spaces,
    stray punctuation) are skipped; a cut-off quantum or misplaced padding fails, as it fails there."""
    kept = _NOT_BASE64.sub("", value)
    decoded: list[bytes] = []
    at = 0
    while at < len(kept):
        run = _RUN.match(kept, at)
        if run is None or run.end() == at:
            raise ContextError(f"{what} in the CernVM Online reply is not valid base64: a group of 4 "
                               "letters is cut off or has '=' out of place")
        decoded.append(base64.b64decode(run.group()))
        at = run.end()
    return b"".join(decoded)


def parse_reply(body: bytes, pin: str = "", secret: str = "") -> OnlineContext:
    """The context in a reply of ``/api/context``; the service's error tokens become ContextErrors."""
    text = _text(body, "the CernVM Online reply")
    first = text.lstrip().split("\n", 1)[0].strip()
    if first in ERRORS:
        message, hint = ERRORS[first]
        raise ContextError(message.format(pin=pin or "?"), hint)
    if first.startswith("ENCRYPTED:"):
        if not secret:
            raise ContextError("the CernVM Online context is encrypted and no secret was given",
                               "give the context's secret (PINs of encrypted contexts end in an odd digit)")
        plain = decrypt(_b64(text.lstrip()[len("ENCRYPTED:"):], "the encrypted context"), secret)
        try:
            text = plain.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if "\x00" in text or "EC2_USER_DATA=" not in text:
            raise ContextError("the CernVM Online context does not decrypt to a context",
                               "check the secret")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = _KEY_VALUE.match(line.strip())
        if match:
            fields[match[1]] = match[2]
    if not fields.get("EC2_USER_DATA"):
        sample = text.strip()[:60]
        raise ContextError(f"the CernVM Online reply has no EC2_USER_DATA (it starts {sample!r})",
                           "check the service URL: this does not look like a CernVM Online service")
    pubkey = ""
    if fields.get("ROOT_PUBKEY"):
        pubkey = _text(_b64(fields["ROOT_PUBKEY"], "ROOT_PUBKEY"), "ROOT_PUBKEY").strip()
    name = fields.get("VM_CONTEXT_NAME", "")
    if len(name) >= 2 and name[0] == name[-1] == '"':  # the server writes VM_CONTEXT_NAME="<name>"
        name = name[1:-1]
    return OnlineContext(_b64(fields["EC2_USER_DATA"], "EC2_USER_DATA"),
                         fields.get("VM_CONTEXT_UUID", ""), name, pubkey, fields)


# --- HTTP ---------------------------------------------------------------------------------------


def service_base(url: str) -> str:
    """The service URL without a trailing slash; no scheme means http://, as curl assumes."""
    url = url.strip().rstrip("/")
    if not url:
        raise ContextError("the CernVM Online service URL is empty", f"the default is {SERVICE_URL}")
    return url if "://" in url else f"http://{url}"


def http_request(url: str, method: str = "GET", data: bytes | None = None,
                 headers: dict[str, str] | None = None, *, timeout: float = TIMEOUT,
                 cafile: str | None = None, limit: int = MAX_REPLY) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are statuses, network failures ContextErrors.

    The standard library's client, so that this module also runs in an OS without ucernvm.
    """
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    tls = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=tls) as response:
            status, body, missing = response.status, response.read(limit + 1), response.length
    except urllib.error.HTTPError as error:
        with error:
            status, body, missing = error.code, error.read(limit + 1), getattr(error, "length", None)
    except http.client.IncompleteRead:  # a chunked reply that ends early
        status, body, missing = 0, b"", 1
    except http.client.HTTPException as error:  # a port that speaks something else, or endless headers
        raise ContextError(f"{_origin(url)} did not answer in HTTP ({type(error).__name__}: {str(error)[:80]})",
                           "check the service URL and its port") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise ContextError(f"cannot reach {_origin(url)}: {reason}", _unreachable_hint(reason)) from None
    if len(body) > limit:
        raise ContextError(f"the reply of {_origin(url)} is larger than {limit} bytes",
                           "check the service URL: this is not a CernVM Online service")
    if missing:  # bytes of the Content-Length (or of a chunk) never came: half a context is not one
        raise ContextError(f"the reply of {_origin(url)} was cut off", "check the network, or try again later")
    return status, body


# OpenSSL's verify codes of a certificate outside its dates (X509_V_ERR_CERT_NOT_YET_VALID, _HAS_EXPIRED)
_CERTIFICATE_DATES = (9, 10)


def _unreachable_hint(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError) and reason.verify_code in _CERTIFICATE_DATES:
        # At boot a clock far off is the likelier cause: NTP blocked, and the servers' Date not read yet.
        now = utc_time(time.time())
        return (f"the certificate's dates are checked against this machine's clock, which reads {now}: "
                "if that is wrong, set ucernvm.ntp= to an NTP server the machine reaches")
    return "check the network and the service URL"


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def machine_uuid() -> str:
    """This machine's identity for the service: the DMI product UUID (stable across re-installs),
    else systemd's machine ID, else a random UUID."""
    for path in ("/sys/class/dmi/id/product_uuid", "/etc/machine-id"):
        try:
            with open(path) as stream:
                return str(uuidlib.UUID(stream.read().strip()))
        except (OSError, ValueError):
            continue
    return str(uuidlib.uuid4())


def _version() -> str:
    from ucernvm import __version__

    return f"ucernvm-{__version__}"


def fetch_context(pin: str, secret: str = "", *, service_url: str = SERVICE_URL,
                  machine: str | None = None, version: str | None = None,
                  timeout: float = TIMEOUT, cafile: str | None = None) -> OnlineContext:
    """The context that ``pin`` pairs this machine with; ContextError for every failure."""
    pin = normalize_pin(pin)
    if needs_secret(pin) and not secret:
        raise ContextError(f"PIN {pin} is for an encrypted context: its secret is needed",
                           "give the context's secret (PINs of encrypted contexts end in an odd digit)")
    query = urllib.parse.urlencode({
        "uuid": machine or machine_uuid(),
        "ver": version or _version(),
        "pin": pin,
        "checksum": checksum(pin, secret),
    })
    url = f"{service_base(service_url)}{CONTEXT_PATH}?{query}"
    status, body = http_request(url, headers={"Accept": "text/plain"}, timeout=timeout, cafile=cafile)
    if status == 400:
        raise ContextError(f"{_origin(url)} rejected the request as malformed (HTTP 400)",
                           "check the service URL")
    if status != 200:
        raise ContextError(f"{_origin(url)} answered HTTP {status} for PIN {pin}",
                           "check the service URL, or try again later")
    return parse_reply(body, pin, secret)
