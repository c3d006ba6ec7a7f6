"""A verified, read-only view of one revision of a repository.

Opening a repository walks the trust chain: master key → whitelist (signature, name, expiry) →
certificate fingerprint → manifest signature → root catalog hash → nested catalog hashes → every
object's content hash. Nothing is returned that was not verified on the way.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from operator import attrgetter
from typing import Generic, TypeVar

from ucernvm.client.cache import Breadcrumb, CacheFull, ObjectCache
from ucernvm.client.sinks import Inflating, Memory, Sink, Sized
from ucernvm.client.sources import RepositorySource
from ucernvm.cvmfs import manifest as manifest_file, whitelist as whitelist_file
from ucernvm.cvmfs.catalog import Catalog, Chunk, DirectoryEntry, NestedCatalogRef, join
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.cvmfs.history import History, Tag
from ucernvm.cvmfs.manifest import Manifest, SignedManifest
from ucernvm.cvmfs.trust import Certificate, PublicKey, load_certificate
from ucernvm.cvmfs.whitelist import SignedWhitelist
from ucernvm.errors import ConfigError, FetchError, FormatError, StorageError, VerificationError
from ucernvm.utc import utc_time


_NAME = attrgetter("name")
_FQRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
T = TypeVar("T")


def check_fqrn(fqrn: str) -> None:
    """Refuse a repository name that is not one (letters, digits, '.', '-', '_'): it names files, the cache's
    copies and the image's keys directory, so a path in its place (from a context, which a later boot reads
    back from the scratch disk) would lead to files anywhere, master keys too."""
    if not _FQRN.fullmatch(fqrn):
        raise ConfigError(f"{fqrn!r} is not a repository name",
                          "a fully qualified repository name, such as cernvm-prod.cern.ch")


def normalize_path(path: str) -> str:
    """Catalog spelling of a path: ``""`` for the root, else ``/a/b`` with no trailing slash."""
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:
        raise FetchError(f"path {path!r} must not contain '..'")
    return "".join("/" + part for part in parts)


class Repository:
    """One verified revision; with a cache, objects are kept locally and a mount works offline."""

    def __init__(
        self,
        source: RepositorySource,
        fqrn: str,
        master_keys: list[PublicKey],
        *,
        now: datetime.datetime | None = None,
        tag: str | None = None,
        root_hash: ContentHash | None = None,
        cache: ObjectCache | None = None,
    ) -> None:
        check_fqrn(fqrn)
        self.source = source
        self.fqrn = fqrn
        self.master_keys = master_keys
        self.cache = cache
        self.warnings: list[str] = []
        now = now or datetime.datetime.now(datetime.timezone.utc)

        whitelist_data, manifest_data, self.offline = self._signed_files()
        whitelist, signed = self._verify(whitelist_data, manifest_data, now)
        try:
            self._check_not_older(signed.manifest)
        except VerificationError as older:
            # As cvmfs: a server behind the newest revision seen (a stale mirror, a replay) leaves that one
            # in use, from the cache's verified copies; only without them is the mount refused.
            cached = None if self.offline or cache is None else self._cached_signed_files()
            if cached is None:
                raise
            self.offline = True
            self.warnings.append(f"{older.message}: using the newest revision seen, from the cache")
            whitelist, signed = self._verify(*cached, now)
            self._check_not_older(signed.manifest)
        if cache is not None and not self.offline:
            try:
                cache.save_named(fqrn, whitelist_file.FILE_NAME, whitelist_data)
                cache.save_named(fqrn, manifest_file.FILE_NAME, manifest_data)
            except StorageError as refused:  # a full disk, or something else in the copies' place
                self.warnings.append(f"{refused.message}: no copy of this revision is kept for offline mounts")

        self.whitelist = whitelist.whitelist
        self.manifest: Manifest = signed.manifest
        self.tag_name = tag or ""  # what the snapshot was chosen by (a pinned boot's pin names one too)
        if root_hash is not None:
            self.root_hash = root_hash
            self.root_catalog_size: int | None = None
        elif tag is not None:
            chosen = self.find_tag(tag)
            self.root_hash, self.root_catalog_size = chosen.root_hash, chosen.size or None
        else:
            self.root_hash, self.root_catalog_size = self.manifest.root_hash, self.manifest.root_catalog_size or None
        self._catalogs: dict[str, Catalog] = {}
        self._catalogs_lock = threading.Lock()
        # Called with each catalog once it is loaded (the mount downloads its nested catalogs ahead).
        self.catalog_loaded: Callable[[Catalog], None] | None = None

    def _verify(self, whitelist_data: bytes, manifest_data: bytes,
                now: datetime.datetime) -> tuple[SignedWhitelist, SignedManifest]:
        """The whitelist and the manifest, verified (the whitelist's expiry only when online)."""
        whitelist = _parse(SignedWhitelist.parse, whitelist_data, "whitelist")
        # Offline, the copies were verified when they were fetched; an expiry since then must not
        # stop a machine from booting what it already booted.
        whitelist.verify(self.master_keys, self.fqrn, now, check_expiry=not self.offline)
        if self.offline and whitelist.whitelist.expired_at(now):
            self.warnings.append("offline with an expired whitelist: using the cached, verified revision")
        signed = _parse(SignedManifest.parse, manifest_data, "manifest")
        if signed.manifest.certificate is None:
            raise VerificationError("the manifest names no certificate (X line)")
        certificate_hash = signed.manifest.certificate
        certificate = self._checked(certificate_hash, lambda: self._listed_certificate(certificate_hash, whitelist))
        signed.verify(certificate, self.fqrn)
        return whitelist, signed

    def _listed_certificate(self, content_hash: ContentHash, whitelist: SignedWhitelist) -> Certificate:
        certificate = load_certificate(self._fetch_kept(content_hash, ObjectType.CERTIFICATE))
        whitelist.check_certificate(certificate)
        return certificate

    def _cached_signed_files(self) -> tuple[bytes, bytes] | None:
        """The whitelist and manifest the cache kept of the last revision verified online, if it has both."""
        assert self.cache is not None
        whitelist = self.cache.load_named(self.fqrn, whitelist_file.FILE_NAME)
        manifest = self.cache.load_named(self.fqrn, manifest_file.FILE_NAME)
        return None if whitelist is None or manifest is None else (whitelist, manifest)

    def _signed_files(self) -> tuple[bytes, bytes, bool]:
        """Whitelist and manifest from the servers, or the cached copies when no server answers.

        The two are fetched side by side: a mount (and every boot) waits for one round trip to the
        servers instead of two."""
        pending = _InThread(lambda: self.source.fetch_named(whitelist_file.FILE_NAME), "whitelist")
        try:
            manifest = self.source.fetch_named(manifest_file.FILE_NAME)
            return pending.result(), manifest, False
        except FetchError as failure:
            error = failure
        pending.wait()
        if self.cache is None:
            raise error
        cached = self._cached_signed_files()
        if cached is None:
            raise FetchError(error.message, "no server answered and the cache holds no earlier revision") from None
        self.warnings.append(f"offline: {error.message}; using the cached revision")
        return *cached, True

    def _check_not_older(self, manifest: Manifest) -> None:
        """Refuse a manifest older than one this cache has already seen (a replay or a stale mirror)."""
        if self.cache is None:
            return
        seen = self._seen()
        timestamp = manifest.timestamp or 0
        if seen is not None and (timestamp < seen.timestamp or manifest.revision < seen.revision):
            if self.offline:
                offered, why = "the cache's copy is", "an older copy was put in its place; a server's answer replaces it"
            else:
                offered, why = "the servers offer", ("a stale mirror or a replayed manifest; if the rollback is "
                                                     "intended, clear the cache")
            raise VerificationError(
                f"{offered} revision {manifest.revision} (published {utc_time(timestamp)}), older than revision "
                f"{seen.revision} (published {utc_time(seen.timestamp)}) already seen", why)
        if seen is None or (timestamp, manifest.revision) > (seen.timestamp, seen.revision):
            try:
                self.cache.save_breadcrumb(self.fqrn, Breadcrumb(manifest.root_hash.hex, timestamp, manifest.revision))
            except StorageError as refused:  # the last revision recorded still guards against older ones
                self.warnings.append(f"{refused.message}: revision {manifest.revision} is not recorded as seen")

    def _seen(self) -> Breadcrumb | None:
        """The cache's breadcrumb; a damaged one (a disk error, or written by hand) counts as none, with a
        warning, as cvmfs passes over a checksum file it cannot parse: it guards only against servers, and
        whoever can damage it can as well remove it. The snapshot a boot chose is guarded apart
        (boot/snapshot.py)."""
        assert self.cache is not None
        try:
            return self.cache.breadcrumb(self.fqrn)
        except FormatError as damaged:
            self.warnings.append(f"{damaged.message}: passed over, this revision is recorded instead")
            return None

    # -- objects -------------------------------------------------------------------------------

    def _filler(
        self, content_hash: ContentHash, object_type: ObjectType, size: int | None, compressed: bool
    ) -> Callable[[Sink], None]:
        """What writes an object's verified bytes, inflated (``size`` of them, if given), to a sink."""
        def fill(out: Sink) -> None:
            try:
                self.source.fetch_object(content_hash, object_type, Inflating(out, size) if compressed else Sized(out, size))
            except FormatError as error:
                raise FormatError(f"{error.message} ({content_hash.object_path(object_type)})", error.hint) from None

        return fill

    def _checked(self, content_hash: ContentHash, use: Callable[[], T]) -> T:
        """``use()`` of an object read through the cache; where it finds the bytes bad (a FormatError, a
        VerificationError), a cached copy is dropped and ``use()`` runs once more, on a fresh download.

        The cache keeps objects by name, as cvmfs does, without hashing them again at each use (their
        hash is of the compressed bytes, the cache holds them inflated). They were verified when stored,
        so a copy that no longer opens, or is not what its place in the chain needs (a certificate the
        whitelist does not list, a catalog for another directory), was changed on the scratch disk
        since: by a disk error, or by hand. Fetching it again heals the cache instead of failing every
        later mount, and a server's bad object is refused as before."""
        try:
            return use()
        except (FormatError, VerificationError) as bad:
            if self.cache is None or not self.cache.drop(content_hash, f"was found bad ({bad.message})"):
                raise
        return use()

    def _fetch_into_memory(self, fill: Callable[[Sink], None]) -> bytes:
        out = Memory()
        fill(out)
        return out.value()

    def fetch(
        self, content_hash: ContentHash, object_type: ObjectType, expected_size: int | None = None, compressed: bool = True
    ) -> bytes:
        """An object's verified, decompressed bytes (through the cache when there is one)."""
        fill = self._filler(content_hash, object_type, expected_size, compressed)
        cache = self.cache
        if cache is None:
            return self._fetch_into_memory(fill)
        try:
            # A copy of another size than the catalog gives is fetched again (ObjectCache.open).
            fd = self._checked(content_hash, lambda: cache.open(content_hash, fill, expected_size))
        except CacheFull:  # no room on the disk: fetched again, into memory
            return self._fetch_into_memory(fill)
        with os.fdopen(fd, "rb") as handle:
            return handle.read()

    def _fetch_kept(self, content_hash: ContentHash, object_type: ObjectType) -> bytes:
        """An object every mount of this revision needs (the certificate, the history): pinned for the
        repository's life, as its loaded catalogs are, so that the quota never evicts what a mount with
        every server down needs next time."""
        if self.cache is not None:
            self.cache.pin(content_hash)
        return self.fetch(content_hash, object_type)

    def open_chunk(self, entry: DirectoryEntry, chunk: Chunk) -> int:
        """A descriptor on the cached, verified bytes of one of a file's chunks (needs a cache)."""
        cache = self.cache
        if cache is None:
            raise FetchError("reading objects as files needs a cache directory")
        fill = self._filler(chunk.content_hash, entry.piece_type, chunk.size, entry.is_compressed)
        return self._checked(chunk.content_hash, lambda: cache.open(chunk.content_hash, fill, chunk.size))

    def meta_info(self) -> bytes | None:
        """The repository's meta-info JSON (manifest M), verified; None where it has none."""
        if self.manifest.metainfo is None:
            return None
        return self.fetch(self.manifest.metainfo, ObjectType.METAINFO)

    # -- history -------------------------------------------------------------------------------

    @cached_property
    def history(self) -> History | None:
        if self.manifest.history is None:
            return None
        content_hash = self.manifest.history
        return self._checked(content_hash,
                             lambda: History.from_bytes(self._fetch_kept(content_hash, ObjectType.HISTORY)))

    def tags(self) -> list[Tag]:
        return self.history.tags() if self.history else []

    def find_tag(self, name: str) -> Tag:
        found = self.history.find(name) if self.history else None
        if found is None:
            names = ", ".join(tag.name for tag in self.tags()) or "none"
            raise FetchError(f"repository {self.fqrn} has no tag {name!r}", f"known tags: {names}")
        return found

    # -- catalogs ------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self.root_catalog.revision

    @property
    def root_catalog(self) -> Catalog:
        return self.catalog_for("")

    def stores_xattrs(self) -> bool:
        """Whether any entry of the snapshot has extended attributes (the root catalog's counters count
        every nested catalog's too); True when a catalog too old to count them cannot tell."""
        statistics = self.root_catalog.statistics()
        if "self_xattr" not in statistics:
            return True
        return statistics["self_xattr"] + statistics.get("subtree_xattr", 0) > 0

    def _load_catalog(self, mountpoint: str, content_hash: ContentHash, size: int | None, root_prefix: str) -> Catalog:
        """The catalog mounted at ``mountpoint``, which must be the one for ``root_prefix`` (its path in the
        snapshot it belongs to: ``""`` for a root catalog, the head's or, bound below /.cvmfs/snapshots,
        a tag's)."""
        catalog = self._catalogs.get(mountpoint)
        if catalog is not None:
            return catalog
        # Loaded without holding the lock: lookups in loaded catalogs, and the loads of other
        # catalogs, do not wait for this download. Threads loading the same catalog share one
        # download through the cache; all but the first to finish drop their copy.
        loaded = self._checked(content_hash,
                               lambda: self._open_catalog_for(mountpoint, content_hash, size, root_prefix))
        with self._catalogs_lock:
            catalog = self._catalogs.setdefault(mountpoint, loaded)
        if catalog is not loaded:
            loaded.close()
            if self.cache is not None:
                self.cache.unpin(content_hash)
        elif self.catalog_loaded is not None:
            self.catalog_loaded(catalog)
        return catalog

    def _open_catalog_for(self, mountpoint: str, content_hash: ContentHash, size: int | None,
                          root_prefix: str) -> Catalog:
        loaded = self._open_catalog(content_hash, size)
        if loaded.root_prefix != root_prefix:
            loaded.close()
            raise VerificationError(
                f"catalog {content_hash} mounted at {mountpoint or '/'} is for {loaded.root_prefix or '/'!r}, "
                f"not {root_prefix or '/'!r}"
            )
        return loaded

    def _open_catalog(self, content_hash: ContentHash, size: int | None) -> Catalog:
        if self.cache is None:
            return Catalog.from_bytes(self.fetch(content_hash, ObjectType.CATALOG, size or None), content_hash)
        # Opened in place, as cvmfs does, and pinned: a loaded catalog is never evicted.
        self.cache.pin(content_hash)
        fill = self._catalog_filler(content_hash, size)
        try:
            path = self.cache.get(content_hash, fill)
        except CacheFull:  # no room on the disk: the catalog is fetched again, into memory
            return Catalog.from_bytes(self._fetch_into_memory(fill), content_hash)
        return Catalog.open(path, content_hash)

    def _catalog_filler(self, content_hash: ContentHash, size: int | None) -> Callable[[Sink], None]:
        return self._filler(content_hash, ObjectType.CATALOG, size or None, True)

    def prefetch_catalog(self, reference: NestedCatalogRef) -> str | None:
        """Download a nested catalog into the cache, where a later load finds it; its path there (None
        without a cache, or when the disk is full: the load downloads it again, into memory)."""
        if self.cache is None:
            return None
        try:
            return self.cache.get(reference.content_hash, self._catalog_filler(reference.content_hash, reference.size))
        except CacheFull:
            return None

    def loaded_catalogs(self) -> list[Catalog]:
        with self._catalogs_lock:
            return list(self._catalogs.values())

    def catalog_for(self, path: str) -> Catalog:
        """The deepest catalog responsible for ``path``, loading nested catalogs on the way."""
        return self.hosting_catalog(path)[1]

    def hosting_catalog(self, path: str) -> tuple[str, Catalog]:
        """The mountpoint (``""`` for the root) and the catalog of :meth:`catalog_for`."""
        mountpoint, catalog, _ = self._resolve(path)
        return mountpoint, catalog

    def _resolve(self, path: str) -> tuple[str, Catalog, str]:
        """The mountpoint and catalog of :meth:`hosting_catalog`, and ``path`` as that catalog keys it.

        A catalog keys its rows by their path in its own snapshot: below a bind mountpoint (the
        /.cvmfs/snapshots/<tag> of a virtual directory) a tag's catalogs key ``<mountpoint>/a`` as ``/a``
        and name their nested catalogs so too (cvmfs's Catalog::NormalizePath and PlantPath)."""
        mountpoint, catalog = "", self._load_catalog("", self.root_hash, self.root_catalog_size, "")
        inner = path
        while True:
            reference = catalog.nested_catalog_for(inner)
            if reference is None:
                return mountpoint, catalog, inner
            prefix = catalog.root_prefix
            if not reference.path.startswith(prefix + "/"):
                raise VerificationError(f"catalog {catalog.content_hash} for {prefix or '/'!r} mounts {reference.path!r}")
            mountpoint += reference.path[len(prefix):]
            catalog = self._load_catalog(
                mountpoint, reference.content_hash, reference.size, "" if reference.bind else reference.path
            )
            inner = catalog.root_prefix + path[len(mountpoint):]

    def lookup(self, path: str) -> DirectoryEntry | None:
        path = normalize_path(path)
        _, catalog, inner = self._resolve(path)
        entry = catalog.lookup(inner)
        if entry is not None and path and not inner:  # a bind mountpoint: the bound snapshot's root entry
            return entry._replace(name=path.rsplit("/", 1)[1])
        return entry

    def entry(self, path: str) -> DirectoryEntry:
        found = self.lookup(path)
        if found is None:
            raise FetchError(f"{path or '/'}: no such file or directory in {self.fqrn}")
        return found

    def listdir(self, path: str, *, hidden: bool = False) -> list[DirectoryEntry]:
        """The entries of a directory, sorted by name: the visible ones, or with ``hidden`` all of them
        (a hidden entry is not listed but can be looked up)."""
        path = normalize_path(path)
        _, catalog, inner = self._resolve(path)
        entries = catalog.listing(inner)
        # Only an empty listing can be a file's or a missing path's: the lookup is paid there only.
        if not entries and not self.entry(path).is_directory:
            raise FetchError(f"{path}: not a directory")
        if not hidden:
            entries = [entry for entry in entries if not entry.is_hidden]
        entries.sort(key=_NAME)
        return entries

    def walk(self, path: str = "") -> Iterator[tuple[str, DirectoryEntry]]:
        """Every entry below ``path`` (depth first, sorted), as ``(absolute path, entry)``."""
        path = normalize_path(path)
        for entry in self.listdir(path):
            child = join(path, entry.name)
            yield child, entry
            if entry.is_directory:
                yield from self.walk(child)

    # -- file contents -------------------------------------------------------------------------

    def chunks(self, path: str, entry: DirectoryEntry) -> list[Chunk]:
        if not entry.is_chunked:
            if entry.content_hash is None:
                raise FormatError(f"{path}: regular file without a content hash")
            return [Chunk(0, entry.size, entry.content_hash)]
        _, catalog, inner = self._resolve(path)
        chunks = catalog.chunks(inner, entry.hash_algorithm)
        covered = 0  # each chunk starts where the one before ended, and the last ends with the file
        for chunk in chunks:
            if chunk.offset != covered:
                break
            covered += chunk.size
        else:
            if covered == entry.size:
                return chunks
        raise FormatError(f"{path}: the chunk list does not cover the file")

    def iter_content(self, path: str) -> Iterator[bytes]:
        """The bytes of a regular file, piece by piece, each verified before it is yielded."""
        path = normalize_path(path)
        entry = self.entry(path)
        if not entry.is_regular:
            raise FetchError(f"{path}: not a regular file")
        if entry.is_external:
            raise FetchError(f"{path}: external files (stored outside the repository) are not supported")
        for chunk in self.chunks(path, entry):
            yield self.read_piece(chunk, entry.piece_type, entry.is_compressed)

    def read_piece(self, chunk: Chunk, object_type: ObjectType, compressed: bool) -> bytes:
        return self.fetch(chunk.content_hash, object_type, chunk.size, compressed)

    def read(self, path: str) -> bytes:
        return b"".join(self.iter_content(path))


class _InThread(Generic[T]):
    """A call run in a thread of its own; ``result()`` waits for it and returns or raises what it did.

    concurrent.futures would do, but it imports logging, which the boot does without (see lazylog.py)."""

    def __init__(self, call: Callable[[], T], name: str) -> None:
        self._call = call
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as error:  # handed to the caller of result()
            self._error = error

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> T:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def _parse(parser, data: bytes, what: str):  # type: ignore[no-untyped-def]
    try:
        return parser(data)
    except FormatError as error:
        raise VerificationError(f"{error.message}", f"the {what} is damaged or not a CernVM-FS {what}") from None
