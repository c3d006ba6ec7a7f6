"""``ucernvm publish SRC_DIR --repo REPO_DIR --name FQRN --keys DIR``: publish a tree as a new revision."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ucernvm.commands.resign import check_days
from ucernvm.cvmfs.chunking import ChunkingParams
from ucernvm.cvmfs.compression import Compression
from ucernvm.cvmfs.hashing import HashAlgorithm
from ucernvm.cvmfs.ingest import IngestOptions
from ucernvm.cvmfs.publisher import PublishOptions, PublishProgress, Publisher
from ucernvm.cvmfs.whitelist import DEFAULT_VALIDITY_DAYS
from ucernvm.errors import ConfigError, FormatError

MiB = 1 << 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="publish a directory tree as a new revision of a repository",
        description="Turn SRC_DIR into a new signed revision of the repository in REPO_DIR (created on the "
        "first publish; it is what a web server exposes as /cvmfs/<fqrn>/). SRC_DIR is the whole new tree, "
        "as /cvmfs/<fqrn> is at the end of a cvmfs_server transaction: what it lacks is not in the new "
        "revision. Unchanged files (same size and "
        "mtime as in the previous revision) and unchanged nested catalogs are reused, not rewritten. A "
        "directory holding a .cvmfscatalog file becomes a nested catalog, and so does one the patterns of "
        "SRC_DIR/.cvmfsdirtab select (it gets an empty .cvmfscatalog, as with cvmfs_server). The new revision becomes visible "
        "atomically when its manifest is renamed into place.",
    )
    parser.add_argument("source", metavar="SRC_DIR", help="the directory tree to publish")
    parser.add_argument("--repo", required=True, metavar="REPO_DIR", help="the repository directory")
    parser.add_argument("--name", required=True, metavar="FQRN", help="repository name, e.g. cernvm-prod.cern.ch")
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="directory with FQRN.key and FQRN.crt (the manifest's signing key and certificate), "
                        "FQRN.pub (the master public key: every publish, the first too, needs it, to verify the "
                        "revision it builds on as clients do) and, for the first publish, FQRN.masterkey (it "
                        "signs the whitelist), as `ucernvm keygen` writes them")
    parser.add_argument("-a", "--tag", metavar="TAG",
                        help="name this snapshot with a name not in use yet (default: generic-<UTC time>; "
                        "cvmfs_server publish -a)")
    parser.add_argument("-m", "--description", default="",
                        help="description stored with the tag (cvmfs_server publish -m)")
    parser.add_argument("-d", "--days", type=int, default=None,
                        help="validity in days of the whitelist that the first publish creates (default "
                        f"{DEFAULT_VALIDITY_DAYS}, as cvmfs_server mkfs; as resign -d); a later publish keeps the "
                        "whitelist, which `ucernvm resign` renews, and warns that --days was not used")
    parser.add_argument("--ttl", type=int, default=240, metavar="SECONDS",
                        help="how long clients keep the revision before they look for a newer one "
                        "(default: %(default)s; CVMFS_REPOSITORY_TTL)")
    parser.add_argument(
        "--chunk-sizes",
        default="4194304,8388608,16777216",
        metavar="MIN,AVG,MAX",
        help="content-defined chunking of large files, in bytes (default: %(default)s, the cvmfs sizes "
        "CVMFS_MIN_CHUNK_SIZE, CVMFS_AVG_CHUNK_SIZE, CVMFS_MAX_CHUNK_SIZE); 'off' disables it, as "
        "CVMFS_USE_FILE_CHUNKING=false",
    )
    parser.add_argument(
        "--compression",
        default="fast",
        choices=[choice.value for choice in Compression],
        help="zlib encoder for file data: fast (ISA-L, default), cvmfs (zlib level 6, as cvmfs_server), "
        "or none (store file data uncompressed, CVMFS_COMPRESSION_ALGORITHM=none); every reader inflates all "
        "of them with plain zlib",
    )
    parser.add_argument("--hash", default="sha1", choices=["sha1", "rmd160", "shake128"],
                        help="content hash algorithm (default: %(default)s, as cvmfs_server; "
                        "CVMFS_HASH_ALGORITHM)")
    parser.add_argument("--workers", type=int, default=None, metavar="N", help="parallel workers (default: CPUs)")
    parser.add_argument("--rehash", action="store_true", help="read every file even if it looks unchanged")
    parser.add_argument("--no-xattrs", action="store_true",
                        help="do not record extended attributes. They are recorded by default, where cvmfs_server "
                        "needs CVMFS_INCLUDE_XATTRS=true: an OS tree's file capabilities are kept in them. A file "
                        "keeps 255 at most, the first by name, with a warning, and none of 64 KiB; a value longer than 255 "
                        "bytes is stored as cvmfs 2.14 stores it, which clients before 2.14 do not read")
    parser.add_argument("--prefetch-list", metavar="FILE",
                        help="publish FILE as /.ucernvm_prefetch, the snapshot's prefetch list: the files a boot "
                        "downloads ahead, in order (one repository path per line; a booted machine writes the "
                        "order it read files in to /mnt/.rw/cache/read-order.txt at SIGUSR1 to its mount daemon)")
    parser.add_argument("--meta-info", metavar="FILE",
                        help="the repository's meta-info, a JSON object as cvmfs_server update-repoinfo takes "
                        "(administrator, email, organisation, description, url, recommended-stratum0, "
                        "recommended-stratum1s, custom); later revisions keep it until another is given")
    parser.add_argument("--virtual-dir", action=argparse.BooleanOptionalAction, default=None,
                        help="keep /.cvmfs/snapshots/<tag>, every earlier tag's snapshot in a hidden directory, "
                        "as cvmfs_server's CVMFS_VIRTUAL_DIR=true (the source tree may then have no /.cvmfs); "
                        "later revisions keep it until --no-virtual-dir removes it (default: as the previous "
                        "revision; a new repository has none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.set_defaults(func=run)


def parse_chunking(text: str) -> ChunkingParams | None:
    if text == "off":
        return None
    try:
        low, average, high = (int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--chunk-sizes must be MIN,AVG,MAX in bytes or 'off', not {text!r}") from None
    return ChunkingParams(low, average, high)


class ProgressBar:
    """A one-line progress bar on a terminal, redrawn at most five times a second."""

    def __init__(self) -> None:
        self._last = 0.0
        self._started = time.monotonic()

    def __call__(self, progress: PublishProgress) -> None:
        now = time.monotonic()
        done = progress.files_done == progress.files_total
        if now - self._last < 0.2 and not done:
            return
        self._last = now
        fraction = progress.bytes_done / progress.bytes_total if progress.bytes_total else 1.0
        bar = "#" * int(fraction * 30)
        rate = progress.bytes_done / MiB / max(now - self._started, 1e-6)
        sys.stderr.write(
            f"\r[{bar:<30}] {progress.files_done}/{progress.files_total} files "
            f"{progress.bytes_done / MiB:.1f}/{progress.bytes_total / MiB:.1f} MiB {rate:.1f} MiB/s"
        )
        if done:
            sys.stderr.write("\n")
        sys.stderr.flush()


def prefetch_list_file(list_file: str, source: str) -> tuple[tuple[str, str], str]:
    """The list as a file of the snapshot's root (its name there, ``list_file``) and a summary line of how many
    of its paths the tree has; a list none of whose paths it has is a ConfigError."""
    from ucernvm.client.prefetch import PREFETCH_LIST, parse_prefetch_list  # the mount's code: not at every start

    try:
        with open(list_file, "rb") as handle:
            paths = parse_prefetch_list(handle.read())
    except OSError as error:
        raise ConfigError(f"cannot read the prefetch list {list_file}: {error.strerror}") from None
    missing = [path for path in paths if not os.path.lexists(os.path.join(source, path.lstrip("/")))]
    if not paths or len(missing) == len(paths):
        raise ConfigError(f"the prefetch list {list_file} names no file of {source}",
                          "it holds repository paths, one per line, such as /usr/bin/bash")
    note = f"prefetch list /{PREFETCH_LIST}: {len(paths)} paths"
    if missing:
        note += f", {len(missing)} not in the tree (skipped at boot), the first: {missing[0]}"
    return (PREFETCH_LIST, list_file), note


def read_meta_info(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the meta-info file {path}: {error.strerror}") from None


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def run(args: argparse.Namespace) -> int:
    root_files: tuple[tuple[str, str], ...] = ()
    prefetch_note = None
    if args.days is not None:
        check_days(args.days)
    if args.prefetch_list:
        root_file, prefetch_note = prefetch_list_file(args.prefetch_list, args.source)
        root_files = (root_file,)
    try:
        algorithm = HashAlgorithm.from_name(args.hash)
    except FormatError as error:
        raise ConfigError(error.message) from None
    options = PublishOptions(
        tag=args.tag,
        description=args.description,
        ingest=IngestOptions(parse_chunking(args.chunk_sizes), Compression(args.compression), algorithm),
        ttl=args.ttl,
        workers=args.workers or PublishOptions().workers,
        rehash=args.rehash,
        include_xattrs=not args.no_xattrs,
        root_files=root_files,
        meta_info=read_meta_info(args.meta_info) if args.meta_info else None,
        virtual_dir=args.virtual_dir,
        whitelist_days=DEFAULT_VALIDITY_DAYS if args.days is None else args.days,
    )
    progress = ProgressBar() if sys.stderr.isatty() and not args.quiet else None
    result = Publisher(args.repo, args.name, args.keys, options, progress).publish(args.source)
    warnings = list(result.warnings)
    if args.days is not None and not result.whitelist_created:
        warnings.append(f"--days {args.days} not used: {args.name} has a whitelist already; `ucernvm resign "
                        f"--days {args.days}` renews it")
    for warning in warnings:
        print(f"ucernvm: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        rate = result.bytes_in / MiB / max(result.seconds, 1e-6)
        print(f"published {result.fqrn} revision {result.revision}, root catalog {result.root_hash}")
        print(f"tags: {', '.join(result.tags)}")
        print(
            f"{counted(result.files, 'file')} ({result.files_reused} unchanged), {result.bytes_in / MiB:.1f} MiB read "
            f"in {result.seconds:.2f} s ({rate:.1f} MiB/s); {counted(result.objects_written, 'object')} "
            f"({result.bytes_written / MiB:.1f} MiB) and {counted(result.catalogs_written, 'catalog')} written, "
            f"{counted(result.catalogs_reused, 'catalog')} reused"
        )
        if prefetch_note:
            print(prefetch_note)
        if result.whitelist_created:
            print(f"whitelist created ({counted(options.whitelist_days, 'day')}; renew with `ucernvm resign`)")
    return 0
