"""The signed-text envelope shared by the manifest and the whitelist.

Layout: ``<text ending in \\n>--\\n<hash of text, hex + algorithm id>\\n<raw signature to EOF>``.
"""

from __future__ import annotations


from ucernvm.cvmfs.hashing import ContentHash, HashAlgorithm
from ucernvm.errors import FormatError, VerificationError
from ucernvm.records import NamedTuple

SEPARATOR = b"\n--\n"


class SignedText(NamedTuple):
    text: bytes
    hash_line: bytes
    signature: bytes

    def check_hash(self, what: str) -> None:
        """The hash line must be the hash of the text in the algorithm the line names."""
        try:
            claimed = ContentHash.parse(self.hash_line.decode("ascii"))
        except (UnicodeDecodeError, FormatError):
            raise VerificationError(f"{what}: malformed hash line after the '--' separator") from None
        if not claimed.matches(self.text):
            raise VerificationError(f"{what}: the hash line does not match the signed text (the text was altered)")


def split_signed(data: bytes, what: str) -> SignedText:
    cut = data.find(SEPARATOR)
    if cut < 0:
        raise FormatError(f"{what}: no '--' separator, so it carries no signature")
    text = data[: cut + 1]
    rest = data[cut + len(SEPARATOR) :]
    newline = rest.find(b"\n")
    if newline < 0:
        raise FormatError(f"{what}: truncated after the hash line")
    signature = rest[newline + 1 :]
    if not signature:
        raise FormatError(f"{what}: the signature is missing")
    return SignedText(text, rest[:newline].strip(), signature)


def seal(text: bytes, algorithm: HashAlgorithm) -> tuple[bytes, bytes]:
    """Return the hash line of ``text`` and the envelope without its signature."""
    hash_line = ContentHash.of(text, algorithm).hex.encode("ascii")
    return hash_line, text + b"--\n" + hash_line + b"\n"
