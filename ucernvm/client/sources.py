"""Where a repository's bytes come from: a local stratum directory, or a list of HTTP servers.

A source hands out two kinds of data: the repository's named files (``.cvmfspublished``,
``.cvmfswhitelist``; verified later by their signatures) and content-addressed objects, which a source
streams into a sink and finishes only once they matched their content hash.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from ucernvm.client.sinks import PIECE_SIZE, Checked, Sink
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.errors import ConfigError, FetchError, FormatError, VerificationError


class RepositorySource(Protocol):
    description: str

    def fetch_named(self, name: str) -> bytes:
        """A file at the repository root, e.g. ``.cvmfspublished``."""

    def fetch_object(self, content_hash: ContentHash, object_type: ObjectType, sink: Sink) -> None:
        """The stored (compressed) bytes of an object into ``sink``, finished once they matched
        ``content_hash`` (else an error, the sink unfinished)."""


def corrupt_object_error(content_hash: ContentHash, object_type: ObjectType, where: str,
                         reason: str = "") -> VerificationError:
    """An object that failed its content hash, or (``reason``) did not inflate as it arrived."""
    problem = f"is corrupt ({reason})" if reason else "does not match its content hash"
    return VerificationError(f"object {content_hash.object_path(object_type)} from {where} {problem}",
                             "the stored object is corrupt or was tampered with; it was not used")


class DirectorySource:
    """A repository directory on local disk (what a web server exposes as ``/cvmfs/<fqrn>/``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not (self.root / ".cvmfspublished").is_file():
            raise ConfigError(f"{self.root} is not a CernVM-FS repository (no .cvmfspublished)")
        self.description = str(self.root)

    def fetch_named(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            raise FetchError(f"{name} is missing in {self.root}") from None

    def fetch_object(self, content_hash: ContentHash, object_type: ObjectType, sink: Sink) -> None:
        """Read once, hashed on its way to ``sink`` as a download is (a sink inflates no more than the catalog's
        size, and one of unknown size holds the bytes until they matched), finished only once they matched. An
        object the sink refuses (it does not inflate) is read to its end, hashed only: a wrong hash makes it
        corrupt, a right one an object published broken (the sink's FormatError)."""
        path = content_hash.object_path(object_type)
        body = Checked(sink, content_hash)
        refused: FormatError | None = None
        try:
            stored = open(self.root / path, "rb", buffering=0)
        except FileNotFoundError:
            raise FetchError(f"object {path} is missing in {self.root}", "the repository is incomplete") from None
        with stored:
            while piece := stored.read(PIECE_SIZE):
                if refused is not None:
                    body.hash(piece)
                    continue
                try:
                    body.write(piece)
                except FormatError as error:
                    refused = error
        if not body.matches():
            raise corrupt_object_error(content_hash, object_type, str(self.root))
        if refused is not None:
            raise refused
        body.finish()


def fqrn_from_source(text: str) -> str | None:
    """The repository name a source spelling implies: the last component of ``.../cvmfs/<fqrn>``; None
    where that is a placeholder (``@fqrn@``, as CVMFS_SERVER_URL spells it), which only a name fills."""
    first = text.split(";")[0].strip().rstrip("/")
    path = urlsplit(first).path if "://" in first else first
    name = os.path.basename(path.rstrip("/"))
    return name if name and "@" not in name else None


def open_source(text: str) -> RepositorySource:
    """``http(s)://...`` (several separated by ``;``) opens HTTP servers; anything else a directory."""
    if "://" in text:
        from ucernvm.client.fetcher import HttpSource

        return HttpSource([url.strip() for url in text.split(";") if url.strip()])
    return DirectorySource(text)
