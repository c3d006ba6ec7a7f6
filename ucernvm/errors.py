"""The error hierarchy: every expected failure is one of these, with a message and a hint.

The command line prints ``error: <message>`` and, when there is one, ``hint: <hint>`` on stderr
and exits non-zero; tracebacks are for bugs only.
"""

from __future__ import annotations


class UcernvmError(Exception):
    """An expected failure: bad input, a broken repository, an unreachable server."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(UcernvmError):
    """A knob, option or configuration file has an invalid value."""

    exit_code = 2


class FormatError(UcernvmError):
    """Bytes that do not parse as the CernVM-FS object they claim to be."""


class VerificationError(UcernvmError):
    """A signature, expiry, name, fingerprint or content hash does not check out."""


class FetchError(UcernvmError):
    """Data could not be obtained from any server, proxy or cache."""


class MountError(UcernvmError):
    """A file system could not be mounted or served."""


class ContextError(UcernvmError):
    """User-data could not be obtained or parsed (degrades, never fatal at boot)."""


class StorageError(UcernvmError):
    """Local storage (a repository being written, a cache, the scratch disk) cannot be written."""


class NetworkError(UcernvmError):
    """The network could not be brought up: no interface, no DHCP lease, a link or route refused."""
