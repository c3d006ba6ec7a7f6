"""The repository manifest ``.cvmfspublished``: parse, build, sign and verify."""

from __future__ import annotations


from ucernvm.cvmfs import trust
from ucernvm.cvmfs.envelope import SignedText, split_signed
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.errors import FormatError, VerificationError
from ucernvm.records import NamedTuple

FILE_NAME = ".cvmfspublished"
ROOT_PATH_HASH = "d41d8cd98f00b204e9800998ecf8427e"  # md5(""): the repository root's path hash
DEFAULT_TTL = 240


META_INFO_MAX = 65536  # bytes of the meta-info object (manifest M) that cvmfs clients read


class Manifest(NamedTuple):
    root_hash: ContentHash
    root_catalog_size: int
    revision: int
    ttl: int = DEFAULT_TTL
    root_path_hash: str = ROOT_PATH_HASH
    garbage_collectable: bool = False
    alternative_paths: bool | None = False
    fqrn: str | None = None
    certificate: ContentHash | None = None
    history: ContentHash | None = None
    timestamp: int | None = None
    metainfo: ContentHash | None = None
    reflog: ContentHash | None = None
    micro_catalog: str | None = None

    @classmethod
    def parse(cls, text: bytes) -> Manifest:
        """Parse the key/value lines (up to ``--``); C, R, D and S are mandatory as in cvmfs."""
        try:
            lines = text.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise FormatError("manifest: not ASCII text") from None
        fields: dict[str, str] = {}
        for line in lines:
            if line == "--":
                break
            if line:
                fields[line[0]] = line[1:]
        missing = [key for key in "CRDS" if key not in fields]
        if missing:
            raise FormatError(f"manifest: missing mandatory field(s) {', '.join(missing)}")

        def number(key: str) -> int:
            try:
                value = int(fields[key])
            except ValueError:
                raise FormatError(f"manifest: field {key} is not a number: {fields[key]!r}") from None
            if value < 0:
                raise FormatError(f"manifest: field {key} is negative")
            return value

        def optional_hash(key: str) -> ContentHash | None:
            return ContentHash.parse(fields[key]) if fields.get(key) else None

        def flag(key: str) -> bool | None:
            return fields[key] == "yes" if key in fields else None

        return cls(
            root_hash=ContentHash.parse(fields["C"]),
            root_catalog_size=number("B") if "B" in fields else 0,
            revision=number("S"),
            ttl=number("D"),
            root_path_hash=fields["R"],
            garbage_collectable=bool(flag("G")),
            alternative_paths=flag("A"),
            fqrn=fields.get("N"),
            certificate=optional_hash("X"),
            history=optional_hash("H"),
            timestamp=number("T") if "T" in fields else None,
            metainfo=optional_hash("M"),
            reflog=optional_hash("Y"),
            micro_catalog=fields.get("L"),
        )

    def to_text(self) -> bytes:
        """Export in cvmfs's ``Manifest::ExportString`` order."""
        lines = [
            f"C{self.root_hash.hex}",
            f"B{self.root_catalog_size}",
            f"R{self.root_path_hash}",
            f"D{self.ttl}",
            f"S{self.revision}",
            f"G{'yes' if self.garbage_collectable else 'no'}",
        ]
        if self.alternative_paths is not None:
            lines.append(f"A{'yes' if self.alternative_paths else 'no'}")
        optional = [
            ("L", self.micro_catalog),
            ("N", self.fqrn),
            ("X", self.certificate),
            ("H", self.history),
            ("T", self.timestamp),
            ("M", self.metainfo),
            ("Y", self.reflog),
        ]
        lines += [f"{key}{value}" for key, value in optional if value is not None]
        return ("\n".join(lines) + "\n").encode("ascii")

    def replace(self, **changes: object) -> Manifest:
        return self._replace(**changes)


class SignedManifest(NamedTuple):
    """A manifest as fetched: its fields, and the envelope that proves them."""

    manifest: Manifest
    envelope: SignedText

    @classmethod
    def parse(cls, data: bytes) -> SignedManifest:
        envelope = split_signed(data, "manifest")
        return cls(Manifest.parse(envelope.text), envelope)

    def verify(self, certificate: trust.Certificate, fqrn: str) -> None:
        """Check name, root path hash, the hash line and the certificate's signature over it."""
        manifest = self.manifest
        if manifest.fqrn is None:  # as cvmfs: else a manifest could be replayed under another repository's name
            raise VerificationError(f"manifest names no repository (N line), so it cannot be {fqrn!r}'s")
        if manifest.fqrn != fqrn:
            raise VerificationError(f"manifest is for repository {manifest.fqrn!r}, not {fqrn!r}")
        if manifest.root_path_hash != ROOT_PATH_HASH:
            raise VerificationError(f"manifest has an invalid root path hash {manifest.root_path_hash!r}")
        self.envelope.check_hash("manifest")
        if not trust.manifest_signature_valid(certificate, self.envelope.hash_line, self.envelope.signature):
            raise VerificationError(
                "manifest signature is invalid for the repository certificate",
                "the manifest was altered or signed with another key",
            )

