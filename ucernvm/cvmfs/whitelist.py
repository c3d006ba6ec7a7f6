"""The certificate whitelist ``.cvmfswhitelist``: which signing certificates the master key vouches for."""

from __future__ import annotations

import datetime
import re

from ucernvm.cvmfs import trust
from ucernvm.cvmfs.envelope import SignedText, split_signed
from ucernvm.cvmfs.hashing import ContentHash, HashAlgorithm
from ucernvm.errors import FormatError, VerificationError
from ucernvm.records import NamedTuple

FILE_NAME = ".cvmfswhitelist"
DEFAULT_VALIDITY_DAYS = 30
_TIMESTAMP = "%Y%m%d%H%M%S"


def _parse_time(text: str, what: str) -> datetime.datetime:
    if len(text) != 14 or not text.isdigit():
        raise FormatError(f"whitelist: {what} {text!r} is not YYYYMMDDHHMMSS")
    try:  # not strptime: it imports _strptime and the locale machinery, costly in the boot image
        numbers = [int(text[start:end]) for start, end in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
        return datetime.datetime(*numbers, tzinfo=datetime.timezone.utc)
    except ValueError:
        raise FormatError(f"whitelist: {what} {text!r} is not YYYYMMDDHHMMSS") from None


class Fingerprint(NamedTuple):
    algorithm: HashAlgorithm
    text: str  # upper-case, colon-separated, with the algorithm id (trust.fingerprint_text)

    @classmethod
    def parse(cls, line: str) -> Fingerprint | None:
        """A fingerprint line read as cvmfs's ``MkFromFingerprint`` reads it: up to a space, tab or '#' (the
        rest is a comment), colons left out, in any case. None for a line that makes no hash, which cvmfs
        passes over (a comment line, a stray word)."""
        token = re.split(r"[ \t#]", line, maxsplit=1)[0].replace(":", "").lower()
        try:
            content_hash = ContentHash.parse(token)
        except FormatError:
            return None
        return cls(content_hash.algorithm, trust.fingerprint_text(content_hash.algorithm, content_hash.digest))

    def matches(self, certificate: trust.Certificate) -> bool:
        return trust.certificate_fingerprint(certificate, self.algorithm) == self.text


class Whitelist(NamedTuple):
    created: datetime.datetime
    expires: datetime.datetime
    fqrn: str
    fingerprints: tuple[Fingerprint, ...]
    pkcs7: bool = False
    ca_chain: bool = False

    @classmethod
    def parse(cls, text: bytes) -> Whitelist:
        try:
            lines = text.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise FormatError("whitelist: not ASCII text") from None
        if len(lines) < 4:
            raise FormatError("whitelist: too short (needs creation time, expiry, name, fingerprints)")
        created = _parse_time(lines[0], "creation time")
        if not lines[1].startswith("E"):
            raise FormatError("whitelist: second line must be the expiry 'E<YYYYMMDDHHMMSS>'")
        expires = _parse_time(lines[1][1:], "expiry")
        if not lines[2].startswith("N") or len(lines[2]) < 2:
            raise FormatError("whitelist: third line must be the repository name 'N<fqrn>'")
        pkcs7 = ca_chain = False
        fingerprints = []
        for line in lines[3:]:
            if line == "--":
                break
            if line == "Vpkcs7":
                pkcs7 = True
            elif line == "Wcachain":
                ca_chain = True
            elif (fingerprint := Fingerprint.parse(line)) is not None:
                fingerprints.append(fingerprint)
        if not fingerprints:
            raise FormatError("whitelist: lists no certificate fingerprint")
        return cls(
            created=created,
            expires=expires,
            fqrn=lines[2][1:],
            fingerprints=tuple(fingerprints),
            pkcs7=pkcs7,
            ca_chain=ca_chain,
        )

    def to_text(self) -> bytes:
        lines = [self.created.strftime(_TIMESTAMP), "E" + self.expires.strftime(_TIMESTAMP), "N" + self.fqrn]
        lines += ["Vpkcs7"] if self.pkcs7 else []
        lines += ["Wcachain"] if self.ca_chain else []
        lines += [fingerprint.text for fingerprint in self.fingerprints]
        return ("\n".join(lines) + "\n").encode("ascii")

    def expired_at(self, now: datetime.datetime) -> bool:
        """cvmfs compares year, month, day and hour only: expiry starts at the hour of ``E``."""
        return now >= self.expires.replace(minute=0, second=0, microsecond=0)

    def lists(self, certificate: trust.Certificate) -> bool:
        return any(fingerprint.matches(certificate) for fingerprint in self.fingerprints)


class SignedWhitelist(NamedTuple):
    whitelist: Whitelist
    envelope: SignedText

    @classmethod
    def parse(cls, data: bytes) -> SignedWhitelist:
        envelope = split_signed(data, "whitelist")
        return cls(Whitelist.parse(envelope.text), envelope)

    def verify(
        self, master_keys: list[trust.PublicKey], fqrn: str, now: datetime.datetime, check_expiry: bool = True
    ) -> None:
        """Signature by a trusted master key, repository name, and (unless told not to) expiry as of ``now``."""
        self.envelope.check_hash("whitelist")
        if not trust.raw_signature_valid(master_keys, self.envelope.hash_line, self.envelope.signature):
            raise VerificationError(
                "whitelist signature does not verify with the trusted master key(s)",
                f"check that the trusted master keys include the repository's own ({fqrn}.pub)",
            )
        whitelist = self.whitelist
        if whitelist.fqrn != fqrn:
            raise VerificationError(f"whitelist is for repository {whitelist.fqrn!r}, not {fqrn!r}")
        if whitelist.pkcs7:
            raise VerificationError("whitelist requires PKCS#7 verification, which is not supported")
        if whitelist.ca_chain:  # cvmfs then checks the certificate against trusted CAs, which this reader cannot
            raise VerificationError("whitelist requires the certificate's CA chain to be verified, which is not supported")
        if check_expiry and whitelist.expired_at(now):
            raise VerificationError(
                f"whitelist expired on {whitelist.expires:%Y-%m-%d %H:%M:%S} UTC (the time here: {now:%Y-%m-%d %H:%M:%S} UTC)",
                "if the time here is wrong, set the clock (the boot asks NTP: ucernvm.ntp=); else the repository "
                "maintainer must run `ucernvm resign` (`ucernvm repo` and `mount` read an old snapshot with --now)",
            )

    def check_certificate(self, certificate: trust.Certificate) -> None:
        if not self.whitelist.lists(certificate):
            raise VerificationError(
                "the repository certificate is not on the whitelist",
                "the manifest was signed by a certificate the master key does not vouch for",
            )


def new_whitelist(
    fqrn: str,
    certificates: list[trust.Certificate],
    now: datetime.datetime,
    days: int = DEFAULT_VALIDITY_DAYS,
    algorithm: HashAlgorithm = HashAlgorithm.SHA1,
) -> Whitelist:
    now = now.astimezone(datetime.timezone.utc).replace(microsecond=0)
    fingerprints = tuple(
        Fingerprint(algorithm, trust.certificate_fingerprint(certificate, algorithm)) for certificate in certificates
    )
    return Whitelist(now, now + datetime.timedelta(days=days), fqrn, fingerprints)

