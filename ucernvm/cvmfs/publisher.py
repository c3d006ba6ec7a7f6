"""Publishing a directory tree as a new, signed revision of a repository.

The order of writes is what makes a publish atomic: objects (file data, catalogs, history, certificate)
first, then a flush to disk, then the whitelist if there is none, and last the manifest, renamed into
place. Until that rename, readers keep seeing the previous revision; after a crash, the new objects are
unreferenced garbage and the previous revision is intact.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar


from ucernvm.client.repository import Repository, check_fqrn
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs import manifest as manifest_file, signing, trust, whitelist as whitelist_file, xattrs
from ucernvm.cvmfs.catalog import COMPRESSION_NONE, COMPRESSION_SHIFT, Catalog, DirectoryEntry, Flag, join, parent_path
from ucernvm.cvmfs.catalog_writer import CatalogWriter, Counters
from ucernvm.cvmfs.compression import Compression
from ucernvm.cvmfs.dirtab import Dirtab, read_dirtab
from ucernvm.cvmfs.hashing import DIGEST_SIZE, ContentHash, ObjectType
from ucernvm.cvmfs.history import TRUNK, TRUNK_PREVIOUS, History, Tag
from ucernvm.cvmfs.ingest import FileContent, Ingester, IngestOptions
from ucernvm.cvmfs.manifest import META_INFO_MAX, Manifest
from ucernvm.cvmfs.source_tree import CATALOG_MARKER, SourceNode, add_catalog_marker, add_root_file, scan
from ucernvm.cvmfs.storage import RepositoryStorage
from ucernvm.cvmfs.whitelist import SignedWhitelist, new_whitelist
from ucernvm.errors import ConfigError, FetchError, UcernvmError, VerificationError

DIRECTORY_SIZE = 4096  # what cvmfs records for every directory
VIRTUAL_DIR = "/.cvmfs"  # cvmfs_server's CVMFS_VIRTUAL_DIR (catalog_virtual.cc)
SNAPSHOTS = VIRTUAL_DIR + "/snapshots"
VIRTUAL_DIR_SIZE = 97  # what cvmfs records for /.cvmfs and /.cvmfs/snapshots

_T = TypeVar("_T")


@dataclass(frozen=True)
class PublishOptions:
    tag: str | None = None
    description: str = ""
    ingest: IngestOptions = IngestOptions()
    ttl: int = manifest_file.DEFAULT_TTL
    workers: int = os.cpu_count() or 1
    rehash: bool = False  # read every file even when size and mtime match the previous revision
    include_xattrs: bool = True
    root_files: tuple[tuple[str, str], ...] = ()  # (name, local file): added at the tree's root, see add_root_file
    whitelist_days: int = whitelist_file.DEFAULT_VALIDITY_DAYS
    # The repository's meta-info, a JSON object (as cvmfs_server update-repoinfo stores it); None keeps
    # the previous revision's.
    meta_info: bytes | None = None
    # /.cvmfs/snapshots/<tag> (cvmfs_server's CVMFS_VIRTUAL_DIR); None keeps what the previous revision has.
    virtual_dir: bool | None = None


@dataclass
class PublishProgress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass
class PublishResult:
    fqrn: str
    revision: int
    root_hash: ContentHash
    tags: list[str]
    files: int = 0
    files_reused: int = 0
    bytes_in: int = 0
    objects_written: int = 0
    bytes_written: int = 0
    catalogs_written: int = 0
    catalogs_reused: int = 0
    seconds: float = 0.0
    whitelist_created: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _BuiltCatalog:
    content_hash: ContentHash
    size: int
    self_counters: Counters
    subtree_counters: Counters


class _Keys:
    def __init__(self, keys_dir: str, fqrn: str) -> None:
        paths = signing.key_paths(keys_dir, fqrn)
        self.signing_key = signing.load_private_key(paths["key"])
        self.certificate_pem = _read_certificate(paths["crt"])
        self.certificate = trust.load_certificate(self.certificate_pem)
        self.certificate_path = paths["crt"]
        numbers = self.signing_key.public_key().public_numbers()
        if self.certificate.public_key != trust.PublicKey(numbers.n, numbers.e):
            raise ConfigError(f"{paths['key']} is not the private key of {paths['crt']}")
        self.master_public_path = paths["pub"]
        self.master_public = [_read_master_public(self.master_public_path)]
        self.masterkey_path = paths["masterkey"]


def _read_master_public(path: Path) -> trust.PublicKey:
    """The master public key, which every publish needs, the first one too: each later publish verifies the
    revision it builds on with it, as clients do (cvmfs_server keeps it beside the master key)."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"the master public key {path} does not exist",
                          "the repository is verified with it, as its clients do; "
                          "`ucernvm keygen` writes it beside the master key") from None
    except OSError as error:
        raise ConfigError(f"cannot read the master public key {path}: {error.strerror}") from None
    return trust.load_public_key(pem, str(path))


def _read_certificate(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"certificate {path} does not exist", "create keys with `ucernvm keygen`") from None
    except OSError as error:
        raise ConfigError(f"cannot read the certificate {path}: {error.strerror}") from None


@contextmanager
def _publish_lock(storage: RepositoryStorage) -> Iterator[None]:
    lock_path = storage.root / "data" / "txn" / "publish.lock"
    made = not lock_path.exists()
    with open(lock_path, "w") as handle:
        if made:
            storage.record(lock_path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UcernvmError(f"another publish into {storage.root} is running") from None
        yield


class Publisher:
    def __init__(
        self,
        repo_dir: str,
        fqrn: str,
        keys_dir: str,
        options: PublishOptions = PublishOptions(),
        progress: Callable[[PublishProgress], None] | None = None,
    ) -> None:
        check_fqrn(fqrn)  # it names the key files and goes into every manifest and whitelist
        self.fqrn = fqrn
        self.options = options
        self.storage = RepositoryStorage(repo_dir)
        self.keys = _Keys(keys_dir, fqrn)
        self.progress = progress
        self._progress_state = PublishProgress()
        self.previous: Repository | None = None

    def publish(self, source_dir: str) -> PublishResult:
        started = time.monotonic()
        now_ns = time.time_ns()
        now = now_ns // 1_000_000_000
        first_whitelist = self._check_before_writing()
        tree, dirtab = self._source_tree(source_dir)
        self.storage.create_layout(record=first_whitelist is not None)
        self.ingester = Ingester(self.storage, self.options.ingest, self.options.workers)
        # A first publish that fails removes what it made; one refused the lock leaves it to the publish running.
        removed = self.storage.removed_on_failure(manifest_file.FILE_NAME)
        with _publish_lock(self.storage), removed, self.ingester:
            self.previous = _open_current(self.storage, self.fqrn, self.keys.master_public)
            if self.previous:
                _check_listed(self.previous, self.keys)
            self._check_tag()
            whitelist_bytes = None if self.previous else first_whitelist or self._new_whitelist_bytes()
            self._apply_dirtab(tree, dirtab, now_ns)
            self._virtual_dir = self._wants_virtual_dir(tree)
            contents, reused = self._ingest_files(tree)
            self._contents = contents
            revision = self.previous.manifest.revision + 1 if self.previous else 1
            self._revision = revision
            self._now = now
            self._catalog_stats: Counter[str] = Counter()
            root = self._build_catalog(tree)
            history_hash, tag_names = self._write_history(root, revision, now_ns)
            certificate_hash = self.ingester.store(self.keys.certificate_pem, ObjectType.CERTIFICATE)
            if self.options.meta_info is not None:
                meta_info_hash = self.ingester.store(self.options.meta_info, ObjectType.METAINFO)
            else:
                meta_info_hash = self.previous.manifest.metainfo if self.previous else None
            manifest = Manifest(
                root_hash=root.content_hash,
                root_catalog_size=root.size,
                revision=revision,
                ttl=self.options.ttl,
                fqrn=self.fqrn,
                certificate=certificate_hash,
                history=history_hash,
                timestamp=now,
                metainfo=meta_info_hash,
            )
            self.storage.sync()
            if whitelist_bytes is not None:
                self.storage.put_named(whitelist_file.FILE_NAME, whitelist_bytes)
            self.storage.put_named(manifest_file.FILE_NAME, signing.sign_manifest(manifest, self.keys.signing_key))
        stats = self.ingester.stats
        return PublishResult(
            fqrn=self.fqrn,
            revision=revision,
            root_hash=root.content_hash,
            tags=tag_names,
            files=len(contents),
            files_reused=reused,
            bytes_in=stats.bytes_in,
            objects_written=stats.objects_written,
            bytes_written=stats.bytes_written,
            catalogs_written=self._catalog_stats["written"],
            catalogs_reused=self._catalog_stats["reused"],
            seconds=time.monotonic() - started,
            whitelist_created=whitelist_bytes is not None,
            warnings=self._warnings,
        )

    # -- checks, the previous revision and the whitelist ----------------------------------------

    def _check_before_writing(self) -> bytes | None:
        """Refuse what can be refused before the repository directory is touched: the meta-info, the tag's
        name, the TTL, and for a new repository its master key; the new repository's whitelist, made with it."""
        if self.options.ttl < 0:  # the manifest would hold a TTL no client (nor the next publish) reads
            raise ConfigError(f"the TTL must be 0 or more seconds, not {self.options.ttl}")
        if self.options.meta_info is not None:
            check_meta_info(self.options.meta_info)
        if self.options.tag is not None:
            check_tag_name(self.options.tag)
        return None if self.storage.read_named(manifest_file.FILE_NAME) else self._new_whitelist_bytes()

    def _source_tree(self, source_dir: str) -> tuple[SourceNode, Dirtab | None]:
        """The tree to publish and its dirtab, read (and checked as far as no previous revision is needed)
        before the repository directory is touched."""
        tree = scan(source_dir, self.options.include_xattrs)
        self._warnings = [warning for node in _walk(tree) for warning in _trim_xattrs(node)]
        for name, local_path in self.options.root_files:
            add_root_file(tree, name, local_path)
        _check_virtual_dir(tree, bool(self.options.virtual_dir))
        return tree, read_dirtab(tree)

    def _check_tag(self) -> None:
        """Refuse, before anything is written, a tag name cvmfs_server publish -a refuses: one in use (a tag
        names one revision for good; cvmfs moves a tag only when asked to, with cvmfs_server tag -h). One with
        a space, or one of the tags it keeps itself, is refused before the repository is opened."""
        tag = self.options.tag
        if tag is None:
            return
        existing = self.previous.history.find(tag) if self.previous and self.previous.history else None
        if existing is not None:
            raise ConfigError(f"the tag name {tag!r} is already in use (revision {existing.revision})",
                              "choose another name, or move the tag with `ucernvm tag --add NAME --root-hash "
                              "HASH`; `ucernvm tag -l` lists them")

    def _new_whitelist_bytes(self) -> bytes:
        if not self.keys.masterkey_path.exists():
            raise ConfigError(
                f"a new repository needs its master key {self.keys.masterkey_path} to sign the whitelist",
                "create keys with `ucernvm keygen`",
            )
        data = make_whitelist(self.fqrn, [self.keys.certificate], self.keys.masterkey_path, self.options.whitelist_days)
        try:  # as the next publish will, or the repository could not be published to again
            SignedWhitelist.parse(data).verify(self.keys.master_public, self.fqrn,
                                               datetime.datetime.now(datetime.timezone.utc))
        except VerificationError:
            raise ConfigError(f"the master key {self.keys.masterkey_path} is not the private key of "
                              f"{self.keys.master_public_path}", "give the two that `ucernvm keygen` made together") from None
        return data

    def _wants_virtual_dir(self, tree: SourceNode) -> bool:
        """Whether this revision has /.cvmfs/snapshots: as asked, else as the previous revision (as its
        meta-info is kept). A /.cvmfs of the source tree is refused rather than mixed with the virtual one."""
        wanted = self.options.virtual_dir
        if wanted is None:
            entry = self.previous.root_catalog.lookup(VIRTUAL_DIR) if self.previous else None
            wanted = entry is not None and entry.is_hidden and entry.is_nested_mountpoint
        _check_virtual_dir(tree, wanted)
        return wanted

    def _apply_dirtab(self, tree: SourceNode, dirtab: Dirtab | None, now_ns: int) -> None:
        """A .cvmfscatalog in every directory the tree's /.cvmfsdirtab selects, as cvmfs_server publish adds
        before it syncs. cvmfs keeps such a file in the repository; here the source is the whole tree, so the
        marker is derived anew at each publish: one the dirtab made before keeps its time (and its catalog can
        be reused), and a directory the dirtab stops selecting is merged back into its parent's catalog."""
        for directory in dirtab.select(tree) if dirtab else ():
            previous = self.previous.lookup(join(directory.path, CATALOG_MARKER)) if self.previous else None
            mtime_ns = previous.mtime * 1_000_000_000 + previous.mtime_ns if previous else now_ns
            add_catalog_marker(directory, mtime_ns)

    # -- file contents ---------------------------------------------------------------------------

    def _ingest_files(self, tree: SourceNode) -> tuple[dict[tuple[int, int], FileContent], int]:
        """Store the content of every regular file once per inode; reuse unchanged files' hashes."""
        pending: dict[tuple[int, int], SourceNode] = {}
        contents: dict[tuple[int, int], FileContent] = {}
        for node in _walk(tree):
            if node.is_regular and node.inode_key not in pending and node.inode_key not in contents:
                previous = self._unchanged_content(node) if self.previous and not self.options.rehash else None
                if previous is not None:
                    contents[node.inode_key] = previous
                else:
                    pending[node.inode_key] = node
        reused = len(contents)
        progress = self._progress_state
        progress.files_total = len(pending)
        progress.bytes_total = sum(node.st.st_size for node in pending.values())
        with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool:
            futures = {key: pool.submit(self.ingester.ingest_file, node.fs_path) for key, node in pending.items()}
            for key, future in futures.items():
                contents[key] = future.result()
                progress.files_done += 1
                progress.bytes_done += contents[key].size
                if self.progress:
                    self.progress(progress)
        return contents, reused

    def _unchanged_content(self, node: SourceNode) -> FileContent | None:
        """The previous revision's content of this path if size and mtime say it did not change."""
        assert self.previous is not None
        entry = self.previous.lookup(node.path)
        if (
            entry is None
            or not entry.is_regular
            or entry.size != node.st.st_size
            or (entry.mtime, entry.mtime_ns) != node.mtime
            or entry.is_compressed != (self.options.ingest.compression is not Compression.NONE)
            or entry.hash_algorithm is not self.options.ingest.algorithm
        ):
            return None
        chunks = tuple(self.previous.chunks(node.path, entry)) if entry.is_chunked else ()
        return FileContent(entry.size, entry.content_hash, chunks, entry.is_compressed)

    # -- catalogs ------------------------------------------------------------------------------

    def _build_catalog(self, root: SourceNode) -> _BuiltCatalog:
        writer = CatalogWriter(root.path, self.options.ttl)
        flags = Flag.DIR | (Flag.NESTED_ROOT if root.path else 0)
        virtual_dir = self._virtual_dir and not root.path
        writer.add(root.path, self._directory_entry(root, flags, int(virtual_dir)))  # /.cvmfs is a subdirectory
        self._add_children(writer, root, [0])
        if virtual_dir:
            self._add_virtual_dir(writer)
        return self._finish_catalog(writer)

    def _finish_catalog(self, writer: CatalogWriter) -> _BuiltCatalog:
        """Store the catalog, or reuse the previous revision's if it says the same."""
        mountpoint = writer.root_path
        previous = self._previous_catalog(mountpoint) if mountpoint else None
        if previous is not None and writer.same_content_as(previous[0]):
            catalog, size = previous
            self._catalog_stats["reused"] += 1
            statistics = catalog.statistics()
            return _BuiltCatalog(
                catalog.content_hash,  # type: ignore[arg-type]
                size,
                Counters.from_statistics(statistics, "self_"),
                Counters.from_statistics(statistics, "subtree_"),
            )
        catalog_revision, previous_hash = self._catalog_lineage(mountpoint, previous[0] if previous else None)
        data = writer.finish(catalog_revision, self._now, previous_hash)
        content_hash = self.ingester.store(data, ObjectType.CATALOG)
        self._catalog_stats["written"] += 1
        return _BuiltCatalog(content_hash, len(data), writer.self_counters, writer.subtree_counters)

    def _catalog_lineage(self, mountpoint: str, previous: Catalog | None) -> tuple[int, ContentHash | None]:
        """The revision and previous revision a catalog is written with. The root's are the repository's. A
        nested catalog counts its own: cvmfs creates a new one at revision 0, referenced by the null hash in
        its parent until it is stored, and counts up once at each commit of it."""
        if not mountpoint:
            return self._revision, self.previous.root_hash if self.previous else None
        if previous is None:
            return 1, ContentHash(self.options.ingest.algorithm, bytes(DIGEST_SIZE))
        return previous.revision + 1, previous.content_hash

    def _previous_catalog(self, mountpoint: str) -> tuple[Catalog, int] | None:
        """The previous revision's catalog mounted at ``mountpoint``, with its uncompressed size."""
        if self.previous is None:
            return None
        parent = self.previous.catalog_for(parent_path(mountpoint))
        reference = next((ref for ref in parent.nested_catalogs() if ref.path == mountpoint), None)
        if reference is None:
            return None
        return self.previous.catalog_for(mountpoint), reference.size

    def _add_children(self, writer: CatalogWriter, directory: SourceNode, next_group: list[int]) -> None:
        groups = self._hardlink_groups(directory, next_group)
        for child in directory.children:
            if child.is_directory and child.is_catalog_root:
                built = self._build_catalog(child)
                _add_nested(writer, child.path, self._directory_entry(child, Flag.DIR | Flag.NESTED_MOUNTPOINT), built)
            elif child.is_directory:
                writer.add(child.path, self._directory_entry(child, Flag.DIR))
                self._add_children(writer, child, next_group)
            else:
                entry, content = self._leaf_entry(child, groups.get(child.inode_key, 1))
                writer.add(child.path, entry, content.chunks if content else ())

    def _add_virtual_dir(self, root: CatalogWriter) -> None:
        """/.cvmfs as cvmfs_server makes it with CVMFS_VIRTUAL_DIR=true: a hidden nested catalog holding
        snapshots/<tag> for every tag but trunk and trunk-previous, each a bind mountpoint on the tag's root
        catalog. The tags are the previous revision's (cvmfs tags a revision after writing its catalogs,
        so a tag appears from the next revision on). Made anew at each publish: a tag gone is gone here."""
        previous = self._previous_catalog(VIRTUAL_DIR)
        previous_virtual_dir = previous[0] if previous else None
        # Created once, as cvmfs creates them: their times stay.
        created = previous_virtual_dir.lookup(VIRTUAL_DIR) if previous_virtual_dir else None
        mtime = created.mtime if created else self._now
        # Link counts as cvmfs's AddDirectory keeps them: 2 and one per subdirectory (/.cvmfs has snapshots).
        directory = DirectoryEntry(
            VIRTUAL_DIR[1:], stat.S_IFDIR | 0o555, VIRTUAL_DIR_SIZE, mtime, Flag.DIR | Flag.HIDDEN, 0, 0, hardlinks=3
        )
        writer = CatalogWriter(VIRTUAL_DIR, self.options.ttl)
        writer.add(VIRTUAL_DIR, directory._replace(flags=directory.flags | Flag.NESTED_ROOT))
        compress = self.options.ingest.compression is not Compression.NONE
        marker = FileContent(0, self.ingester.store(b"", ObjectType.FILE, compress), (), compress)
        writer.add(
            f"{VIRTUAL_DIR}/{CATALOG_MARKER}",
            DirectoryEntry(CATALOG_MARKER, stat.S_IFREG | 0o444, 0, mtime, self._file_flags(marker), 0, 0, 1,
                           marker.content_hash.digest),  # type: ignore[union-attr]
        )
        snapshots = list(self._snapshots(previous_virtual_dir))
        writer.add(SNAPSHOTS, directory._replace(name=SNAPSHOTS.rsplit("/", 1)[1], flags=Flag.DIR,
                                                 hardlinks=2 + len(snapshots)))
        for path, entry, content_hash, size in snapshots:
            writer.add(path, entry)
            writer.add_bind_mountpoint(path, content_hash, size)
        _add_nested(root, VIRTUAL_DIR, directory._replace(flags=directory.flags | Flag.NESTED_MOUNTPOINT),
                    self._finish_catalog(writer))

    def _snapshots(
        self, previous_virtual_dir: Catalog | None
    ) -> Iterator[tuple[str, DirectoryEntry, ContentHash, int]]:
        """Path, directory entry, root catalog hash and size of each tag's snapshot directory: the previous
        revision's where its tag still names the same root catalog, else made from that catalog's root entry."""
        if self.previous is None:
            return
        kept_entries = ({entry.name: entry for entry in previous_virtual_dir.listing(SNAPSHOTS)}
                        if previous_virtual_dir else {})
        kept = ({ref.path: ref for ref in previous_virtual_dir.nested_catalogs() if ref.bind}
                if previous_virtual_dir else {})
        for tag in self.previous.tags():
            if tag.name in (TRUNK, TRUNK_PREVIOUS) or "/" in tag.name or tag.name in ("", ".", ".."):
                continue  # the head itself, or a name that cannot name a directory
            path = f"{SNAPSHOTS}/{tag.name}"
            reference = kept.get(path)
            if reference is not None and reference.content_hash == tag.root_hash and tag.name in kept_entries:
                yield path, kept_entries[tag.name], tag.root_hash, reference.size
                continue
            data = self.previous.fetch(tag.root_hash, ObjectType.CATALOG, tag.size or None)
            catalog = Catalog.from_bytes(data, tag.root_hash)
            try:
                root = catalog.lookup("") if not catalog.root_prefix else None
            finally:
                catalog.close()
            if root is None:
                raise VerificationError(f"the root catalog {tag.root_hash} of tag {tag.name!r} is no root catalog")
            # cvmfs copies the snapshot's root directory (its link count too), without its extended attributes.
            entry = root._replace(name=tag.name, flags=Flag.DIR | Flag.BIND_MOUNTPOINT, xattr=None)
            yield path, entry, tag.root_hash, len(data)

    @staticmethod
    def _hardlink_groups(directory: SourceNode, next_group: list[int]) -> dict[tuple[int, int], int]:
        """The ``hardlinks`` value of every inode with several names in this directory.

        cvmfs keeps hard links within one directory: a group id unique in the catalog in the upper 32
        bits, the number of names in the lower 32. Links to other directories become separate files.
        """
        names = Counter(child.inode_key for child in directory.children if not child.is_directory and child.st.st_nlink > 1)
        hardlinks = {}
        for child in directory.children:
            key = child.inode_key
            if names.get(key, 0) > 1 and key not in hardlinks:
                next_group[0] += 1
                hardlinks[key] = (next_group[0] << 32) | names[key]
        return hardlinks

    def _directory_entry(self, node: SourceNode, flags: int, added_subdirectories: int = 0) -> DirectoryEntry:
        subdirectories = sum(1 for child in node.children if child.is_directory) + added_subdirectories
        return self._entry(node, flags, size=DIRECTORY_SIZE, hardlinks=2 + subdirectories)

    def _leaf_entry(self, node: SourceNode, hardlinks: int) -> tuple[DirectoryEntry, FileContent | None]:
        if node.is_regular:
            content = self._contents[node.inode_key]
            return self._entry(node, self._file_flags(content), content.size, hardlinks, content.content_hash), content
        if node.is_symlink:
            size = len(os.fsencode(node.symlink))
            return self._entry(node, Flag.FILE | Flag.LINK, size, hardlinks), None
        device = node.st.st_rdev if stat.S_ISCHR(node.st.st_mode) or stat.S_ISBLK(node.st.st_mode) else 0
        return self._entry(node, Flag.FILE | Flag.SPECIAL, device, hardlinks), None

    def _file_flags(self, content: FileContent) -> int:
        flags = Flag.FILE | self.options.ingest.algorithm.catalog_flag_bits
        flags |= Flag.CHUNKED if content.chunks else 0
        return flags | (0 if content.compressed else COMPRESSION_NONE << COMPRESSION_SHIFT)

    @staticmethod
    def _entry(
        node: SourceNode, flags: int, size: int, hardlinks: int, content_hash: ContentHash | None = None
    ) -> DirectoryEntry:
        mtime, mtime_ns = node.mtime
        return DirectoryEntry(
            name=node.name,
            mode=node.st.st_mode,
            size=size,
            mtime=mtime,
            mtime_ns=mtime_ns,
            flags=int(flags),
            uid=node.st.st_uid,
            gid=node.st.st_gid,
            hardlinks=hardlinks,
            digest=content_hash.digest if content_hash else None,
            symlink=node.symlink,
            xattr=xattrs.encode(node.xattrs),
        )

    # -- history ---------------------------------------------------------------------------------

    def _write_history(self, root: _BuiltCatalog, revision: int, now_ns: int) -> tuple[ContentHash, list[str]]:
        now = now_ns // 1_000_000_000
        previous = self.previous
        history = previous.history if previous and previous.history else History.create(self.fqrn)
        if previous is not None:
            old_trunk = history.find(TRUNK)
            if old_trunk is not None:
                history.insert(Tag(TRUNK_PREVIOUS, old_trunk.root_hash, old_trunk.revision, old_trunk.timestamp, "default undo target", old_trunk.size))
        names = [TRUNK]
        history.insert(Tag(TRUNK, root.content_hash, revision, now, "current HEAD", root.size))
        tag = self.options.tag or generic_tag_name(now_ns)
        history.insert(Tag(tag, root.content_hash, revision, now, self.options.description, root.size))
        names.append(tag)
        return _store_history(self.ingester, history, previous.manifest.history if previous else None), names


def _trim_xattrs(node: SourceNode) -> list[str]:
    """Keep the extended attributes of ``node`` that one catalog entry can hold, and say, naming the file,
    what was left out: an attribute cvmfs's format cannot store (a value of 64 KiB), and beyond the first
    255 by name, since cvmfs_server keeps 256 and writes their count into a byte, where 256 is 0 (a client
    then reads none of them). Refusing the publish would stop a whole tree for one file."""
    warnings = []
    for name in sorted(node.xattrs):
        if (reason := xattrs.unstorable(name, node.xattrs[name])) is not None:
            del node.xattrs[name]
            warnings.append(f"{node.fs_path}: extended attribute {name} left out: {reason}")
    if len(node.xattrs) > xattrs.MAX_ENTRIES:
        names = sorted(node.xattrs)
        node.xattrs = {name: node.xattrs[name] for name in names[:xattrs.MAX_ENTRIES]}
        left_out = names[xattrs.MAX_ENTRIES:]
        warnings.append(f"{node.fs_path}: {len(names)} extended attributes, of which a catalog entry holds "
                        f"{xattrs.MAX_ENTRIES}; published the first {xattrs.MAX_ENTRIES} by name, left out "
                        f"{len(left_out)} ({left_out[0]} to {left_out[-1]})")
    return warnings


def _check_virtual_dir(tree: SourceNode, wanted: bool) -> None:
    """Refuse a /.cvmfs of the source tree where the virtual directory of snapshots goes, rather than mix them."""
    if wanted and any(child.path == VIRTUAL_DIR for child in tree.children):
        raise ConfigError(
            f"the source tree has a {VIRTUAL_DIR} directory, where the virtual directory of snapshots goes",
            f"rename or remove {tree.fs_path}{VIRTUAL_DIR}, or publish with --no-virtual-dir",
        )


def _check_repository_name(storage: RepositoryStorage, published: bytes, fqrn: str) -> None:
    """Refuse a repository directory whose manifest names another repository, before its signatures are
    checked with the other name's keys (which would blame the whitelist or the certificate)."""
    named = manifest_file.SignedManifest.parse(published).manifest.fqrn
    if named is not None and named != fqrn:
        raise ConfigError(f"{storage.root} holds the repository {named}, not {fqrn}",
                          f"give --name {named} (and its keys), or another --repo")


def _open_current(storage: RepositoryStorage, fqrn: str, master_public: list[trust.PublicKey],
                  now: datetime.datetime | None = None,
                  hint: str = "if the whitelist expired or the certificate changed, run `ucernvm resign` first",
                  ) -> Repository | None:
    """The repository's current revision, verified with the master key as of ``now`` (default: the time
    here); None for a new repository."""
    published = storage.read_named(manifest_file.FILE_NAME)
    if published is None:
        return None
    _check_repository_name(storage, published, fqrn)
    try:
        return Repository(DirectorySource(storage.root), fqrn, master_public, now=now)
    except VerificationError as error:
        raise VerificationError(f"the repository's current revision does not verify: {error.message}", hint) from None


def check_tag_name(name: str) -> None:
    """Refuse a name cvmfs_server refuses for a tag: one of the tags it keeps itself, or one with a space."""
    if name in (TRUNK, TRUNK_PREVIOUS):
        raise ConfigError(f"the tag name {name!r} is reserved", "publish keeps trunk and trunk-previous itself")
    if " " in name:
        raise ConfigError(f"the tag name {name!r} has a space", "cvmfs tag names have no spaces")


def _store_history(ingester: Ingester, history: History, replaced: ContentHash | None) -> ContentHash:
    """Store the history database, as the successor of the one ``replaced`` (its previous revision)."""
    history.set_previous_revision(replaced)
    return ingester.store(history.to_bytes(), ObjectType.HISTORY)


def generic_tag_name(now_ns: int) -> str:
    """cvmfs's automatic tag name, ``generic-YYYY-MM-DDThh:mm:ss.sssZ``: to the millisecond, so that a
    revision published in the same second as the one before keeps a tag of its own."""
    seconds, nanoseconds = divmod(now_ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return f"generic-{moment:%Y-%m-%dT%H:%M:%S}.{nanoseconds // 1_000_000:03d}Z"


def check_meta_info(data: bytes) -> None:
    """Refuse what no client could show: meta-info that is not a JSON object, or is larger than cvmfs
    clients read (64 KiB)."""
    if len(data) > META_INFO_MAX:
        raise ConfigError(f"the meta-info is {len(data)} bytes; clients read at most {META_INFO_MAX}")
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"the meta-info is not JSON: {error}",
                          'write a JSON object, e.g. {"administrator": "...", "email": "..."}') from None
    if not isinstance(parsed, dict):
        raise ConfigError("the meta-info must be a JSON object", 'e.g. {"administrator": "...", "email": "..."}')


def make_whitelist(fqrn: str, certificates: list[trust.Certificate], masterkey_path: Path, days: int) -> bytes:
    master = signing.load_private_key(masterkey_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    return signing.sign_whitelist(new_whitelist(fqrn, certificates, now, days), master)


def _check_listed(current: Repository, keys: _Keys) -> None:
    """Refuse to sign a manifest with a certificate the whitelist does not list: every client would refuse
    the revision. A new certificate is put on the whitelist first, beside the current one, by resign."""
    if not current.whitelist.lists(keys.certificate):
        raise ConfigError(
            f"the certificate {keys.certificate_path} is not on the repository's whitelist: every client would "
            "refuse what it signs",
            "run `ucernvm resign` with it first: the whitelist then lists it beside the repository's current one",
        )


def _add_nested(writer: CatalogWriter, path: str, mountpoint: DirectoryEntry, built: _BuiltCatalog) -> None:
    """The mountpoint's row and the reference to the child catalog mounted there."""
    writer.add(path, mountpoint)
    writer.add_nested(path, built.content_hash, built.size, built.self_counters, built.subtree_counters)


def _walk(node: SourceNode) -> Iterator[SourceNode]:
    yield node
    for child in node.children:
        yield from _walk(child)


def resign(repo_dir: str, fqrn: str, keys_dir: str, days: int = whitelist_file.DEFAULT_VALIDITY_DAYS) -> SignedWhitelist:
    """Write a fresh whitelist for the repository's certificate, valid for ``days``: as cvmfs_server resign,
    with the master key and the certificate alone (the repository's key may be kept elsewhere). A certificate
    other than the one the manifest names (a new one, to publish with next) is listed beside that one, which
    clients keep looking up until a revision signed with the new one is published."""
    storage = RepositoryStorage(repo_dir)
    published = storage.read_named(manifest_file.FILE_NAME)
    if published is None:
        raise ConfigError(f"{repo_dir} is not a repository (no .cvmfspublished)")
    _check_repository_name(storage, published, fqrn)
    paths = signing.key_paths(keys_dir, fqrn)
    certificate = trust.load_certificate(_read_certificate(paths["crt"]))
    manifest = manifest_file.SignedManifest.parse(published).manifest
    named = signing.named_certificate(storage.root, manifest)
    certificates = [named] if named.der == certificate.der else [named, certificate]
    data = make_whitelist(fqrn, certificates, paths["masterkey"], days)
    storage.put_named(whitelist_file.FILE_NAME, data)
    return SignedWhitelist.parse(data)


def add_tag(repo_dir: str, fqrn: str, keys_dir: str, name: str, root_hash: ContentHash | None = None,
            description: str = "") -> tuple[Tag, Tag | None]:
    """Name a root catalog, as cvmfs_server tag -a: the current revision's, or ``root_hash``'s. A name in use
    is moved, as cvmfs_server tag -a NAME -h HASH moves it, only when ``root_hash`` is given; it keeps its
    description unless another is given. The new tag, and the one it replaced."""
    check_tag_name(name)

    def edit(current: Repository, history: History) -> tuple[Tag, Tag | None]:
        old = history.find(name)
        if old is not None and root_hash is None:
            raise ConfigError(f"the tag name {name!r} is already in use (revision {old.revision})",
                              "to move the tag, give the root catalog it is to name with --root-hash")
        target = root_hash or current.manifest.root_hash
        if old is not None and old.root_hash == target:
            raise ConfigError(f"the tag {name!r} names root catalog {target} already")
        tag = _tag_on(current, name, target, description or (old.description if old else ""))
        history.insert(tag)
        return tag, old

    return _edit_tags(repo_dir, fqrn, keys_dir, edit)


def remove_tags(repo_dir: str, fqrn: str, keys_dir: str, names: list[str]) -> list[Tag]:
    """Remove tags, as cvmfs_server tag -r: every name must be a tag, and none of those publish keeps."""
    for name in names:
        if name in (TRUNK, TRUNK_PREVIOUS):
            raise ConfigError(f"the tag {name!r} cannot be removed", "publish keeps trunk and trunk-previous itself")

    def edit(current: Repository, history: History) -> list[Tag]:
        found = {name: history.find(name) for name in names}
        missing = [name for name, tag in found.items() if tag is None]
        if missing:
            raise ConfigError(f"the repository has no tag {', '.join(map(repr, missing))}",
                              "`ucernvm tag -l` lists them")
        for name in found:
            history.remove(name)
        return [tag for tag in found.values() if tag is not None]

    return _edit_tags(repo_dir, fqrn, keys_dir, edit)


def published_tags(repo_dir: str, fqrn: str, keys_dir: str, now: datetime.datetime | None = None) -> list[Tag]:
    """The tags of the repository's current revision, newest first, as cvmfs_server tag -l and -i read them:
    verified with FQRN.pub alone (the signing and master keys may be kept elsewhere), as of ``now`` (default:
    the time here), which lets a repository whose whitelist expired be read."""
    storage = RepositoryStorage(repo_dir)
    published = storage.read_named(manifest_file.FILE_NAME)
    if published is None:
        raise ConfigError(f"{repo_dir} is not a repository (no .cvmfspublished)", "publish a revision first")
    _check_repository_name(storage, published, fqrn)
    master_public = [_read_master_public(signing.key_paths(keys_dir, fqrn)["pub"])]
    current = _open_current(storage, fqrn, master_public, now,
                            "if the whitelist expired, read as of a time before with --now EPOCH, or run "
                            "`ucernvm resign`; if the certificate changed, run `ucernvm resign`")
    assert current is not None
    return current.tags()


def _edit_tags(repo_dir: str, fqrn: str, keys_dir: str, edit: Callable[[Repository, History], _T]) -> _T:
    """Change the tags as cvmfs_server tag does: a new history database, whose previous revision is the one
    it replaces, and the manifest signed anew to name it; the revision and its catalogs stay as they are."""
    storage = RepositoryStorage(repo_dir)
    if storage.read_named(manifest_file.FILE_NAME) is None:
        raise ConfigError(f"{repo_dir} is not a repository (no .cvmfspublished)", "publish a revision first")
    keys = _Keys(keys_dir, fqrn)
    with _publish_lock(storage):
        current = _open_current(storage, fqrn, keys.master_public)
        assert current is not None
        _check_listed(current, keys)
        history = current.history or History.create(fqrn)
        result = edit(current, history)
        with Ingester(storage, IngestOptions(algorithm=current.manifest.root_hash.algorithm)) as ingester:
            history_hash = _store_history(ingester, history, current.manifest.history)
            certificate_hash = ingester.store(keys.certificate_pem, ObjectType.CERTIFICATE)
        manifest = current.manifest._replace(history=history_hash, certificate=certificate_hash)
        storage.sync()
        storage.put_named(manifest_file.FILE_NAME, signing.sign_manifest(manifest, keys.signing_key))
    return result


def _tag_on(current: Repository, name: str, root_hash: ContentHash, description: str) -> Tag:
    """A tag on the root catalog ``root_hash`` of the repository, with its revision and time, as
    cvmfs_server tag takes them from the catalog."""
    try:
        data = current.fetch(root_hash, ObjectType.CATALOG)
    except FetchError:
        raise ConfigError(f"the repository has no catalog {root_hash}",
                          "give the root catalog hash of a revision, as `ucernvm tag -l -x` lists them") from None
    catalog = Catalog.from_bytes(data, root_hash)
    try:
        if catalog.root_prefix:
            raise ConfigError(f"catalog {root_hash} is the nested catalog of {catalog.root_prefix}, not a root "
                              "catalog", "a tag names the root catalog of a revision")
        return Tag(name, root_hash, catalog.revision, catalog.last_modified, description, len(data))
    finally:
        catalog.close()
