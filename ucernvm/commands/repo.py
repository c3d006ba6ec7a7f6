"""``ucernvm repo verify|ls|cat|tags``: read and verify a repository over HTTP or from a directory."""

from __future__ import annotations

import argparse
import datetime
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from ucernvm.client.cache import ObjectCache
from ucernvm.client.repository import Repository, normalize_path
from ucernvm.client.sources import RepositorySource, fqrn_from_source, open_source
from ucernvm.cvmfs.catalog import DirectoryEntry, join
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.manifest import FILE_NAME as MANIFEST, SignedManifest
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import ConfigError, UcernvmError
from ucernvm.utc import utc_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ucernvm.client.client_config import FetcherConfig


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE and the trust options, shared by ``repo`` and ``mount``."""
    parser.add_argument(
        "source",
        metavar="SOURCE",
        help="repository URL http://host:port/cvmfs/<fqrn> (several separated by ';'), or a local repository directory",
    )
    parser.add_argument("--key", required=True, metavar="PUB", help="master public key file, or a directory of *.pub")
    parser.add_argument("--name", metavar="FQRN", help="repository name (default: the last component of SOURCE)")
    parser.add_argument("--now", type=epoch_time, metavar="EPOCH", help="verify as of this Unix time (whitelist expiry)")
    parser.add_argument("--tag", metavar="TAG", help="read this named snapshot instead of the newest revision")
    parser.add_argument("--root-hash", metavar="HASH", help="read the snapshot with this root catalog hash")
    parser.add_argument("--proxy", metavar="PROXIES",
                        help="HTTP proxies as CVMFS_HTTP_PROXY, e.g. 'http://squid:3128;DIRECT' (an HTTP SOURCE only; "
                             "mount refuses an empty one, as cvmfs refuses to mount without a proxy: say DIRECT for none)")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a cvmfs client setting, e.g. CVMFS_TIMEOUT=10 (repeatable; SOURCE sets CVMFS_SERVER_URL; "
                        "an HTTP SOURCE only)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="a cvmfs client configuration file, KEY=value lines read as /bin/sh reads them "
                        "(repeatable, before -o; an HTTP SOURCE only)")


def epoch_time(text: str) -> datetime.datetime:
    """``--now EPOCH``: a Unix time, in seconds, as the moment to verify as of."""
    try:
        return datetime.datetime.fromtimestamp(float(text), datetime.timezone.utc)
    except (ValueError, OverflowError, OSError):  # not a number, NaN, or beyond the years datetime holds
        raise argparse.ArgumentTypeError(f"not a Unix time in seconds: {text!r}") from None


class _IntermixedParser(argparse.ArgumentParser):
    """Positionals before, between or after the options. argparse (3.11) matches SOURCE and the optional
    PATH of ``ls`` in one go, PATH taking nothing when options follow SOURCE, and then refuses a PATH
    written after the options."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the two passes of the intermixed parse itself
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def register(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_source_arguments(common)

    parser = subparsers.add_parser("repo", help="verify, list and read a repository",
                                   description=__doc__.replace("``", "`"))
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True, parser_class=_IntermixedParser)

    verify = actions.add_parser(
        "verify",
        parents=[common],
        help="check the whole trust chain and every catalog",
        description="Check the whitelist (signature, expiry, name), the certificate fingerprint, the manifest "
        "signature and every catalog's content hash (the earlier tags under /.cvmfs/snapshots are counted, not "
        "descended into); print the repository's revision, publication time, whitelist expiry, tags and meta-info.",
    )
    verify.set_defaults(func=run_verify)

    listing = actions.add_parser("ls", parents=[common], help="list a directory", description="List a directory.")
    listing.add_argument("path", nargs="?", default="/", metavar="PATH", help="a path in the snapshot (default: /)")
    listing.add_argument("-R", "--recursive", action="store_true", help="list subdirectories recursively")
    listing.add_argument("-l", "--long", action="store_true", help="mode, links, size, mtime and link target")
    listing.set_defaults(func=run_ls)

    cat = actions.add_parser(
        "cat", parents=[common], help="write a file's verified bytes to stdout", description="Print a file."
    )
    cat.add_argument("path", metavar="PATH", help="a file in the snapshot")
    cat.set_defaults(func=run_cat)

    tags = actions.add_parser(
        "tags", parents=[common], help="list the named snapshots",
        description="List the named snapshots, newest first, one a line: name, revision, time (as `ucernvm tag -l` "
        "writes it), root catalog hash, description (tab-separated).",
    )
    tags.set_defaults(func=run_tags)


def repository_name(args: argparse.Namespace) -> str:
    fqrn = args.name or fqrn_from_source(args.source)
    if not fqrn:
        raise ConfigError(f"cannot tell the repository name from {args.source!r}", "pass --name FQRN")
    if not args.name and "://" not in args.source:
        _check_directory_name(args.source, fqrn)
    return fqrn


def _check_directory_name(directory: str, fqrn: str) -> None:
    """Refuse a name taken from a repository directory's own name (as `ucernvm publish --repo DIR` wrote
    it) where its manifest names another repository, before the whitelist is refused for it."""
    try:
        named = SignedManifest.parse((Path(directory) / MANIFEST).read_bytes()).manifest.fqrn
    except (OSError, UcernvmError):
        return  # reading the repository says what is wrong with it
    if named is not None and named != fqrn:
        raise ConfigError(f"{directory} holds the repository {named}; its directory name says {fqrn}",
                          f"pass --name {named}")


def source_config(args: argparse.Namespace) -> FetcherConfig | None:
    """The cvmfs client settings of an HTTP SOURCE (--config files, then -o, --proxy and SOURCE itself);
    None for a local directory."""
    if "://" not in args.source:
        if args.proxy is not None or args.options or args.config:
            raise ConfigError("--proxy, -o and --config apply to HTTP sources only")
        return None
    # Imported here: the HTTP stack costs ~0.15 s, which every other subcommand would pay.
    from ucernvm.client.client_config import load_config, parse_option

    overrides = dict(parse_option(option) for option in args.options)
    overrides["CVMFS_SERVER_URL"] = args.source
    if args.proxy is not None:
        overrides["CVMFS_HTTP_PROXY"] = args.proxy
    return load_config(repository_name(args), config_dir=None, files=args.config, overrides=overrides)


def open_repository(args: argparse.Namespace, cache: ObjectCache | None = None,
                    config: FetcherConfig | None = None) -> Repository:
    """The repository SOURCE names, as ``config`` (source_config's, made here when not given) sets it up."""
    fqrn = repository_name(args)
    tag, root_hash = args.tag, ContentHash.parse(args.root_hash) if args.root_hash else None
    config = config or source_config(args)
    source: RepositorySource
    if config is not None:
        from ucernvm.client.fetcher import HttpSource

        source = HttpSource.from_config(config, fqrn)
        if tag is None and root_hash is None:  # the snapshot as cvmfs's configuration names it, unless the command does
            tag, root_hash = config.repository_tag, config.root_hash
    else:
        source = open_source(args.source)
    return Repository(source, fqrn, load_master_keys(args.key), now=args.now, tag=tag, root_hash=root_hash, cache=cache)


def _iso_utc(epoch: int) -> str:
    """A time as one word, for the space-separated lines of ``ls -l``; every other time is utc_time's."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_verify(args: argparse.Namespace) -> int:
    repository = open_repository(args)
    catalogs = snapshots = 0
    pending = [repository.root_catalog]
    while pending:  # load every nested catalog, each verified against the hash its parent lists
        catalog = pending.pop()
        catalogs += 1
        for reference in catalog.nested_catalogs():
            if reference.bind:  # /.cvmfs/snapshots/<tag>: another revision's tree, verified as it is read
                snapshots += 1
            else:
                pending.append(repository.catalog_for(reference.path))
    manifest = repository.manifest
    published = manifest.timestamp  # the head's; a snapshot chosen by --tag or --root-hash has its catalog's
    if repository.root_hash != manifest.root_hash:
        published = repository.root_catalog.last_modified or None
    print(f"name:           {repository.fqrn}")
    print(f"revision:       {repository.revision}")
    if published is not None:
        print(f"published:      {utc_time(published)}")
    print(f"root catalog:   {repository.root_hash}")
    print(f"catalogs:       {catalogs} verified")
    if snapshots:
        print(f"snapshots:      {snapshots} in /.cvmfs/snapshots (earlier tags, not descended into)")
    print(f"whitelist:      expires {utc_time(repository.whitelist.expires.timestamp())}")
    print(f"tags:           {', '.join(tag.name for tag in repository.tags()) or '(none)'}")
    meta_info = repository.meta_info()  # verified like every object: its hash is in the signed manifest
    print(f"meta-info:      {' '.join(meta_info.decode('utf-8', 'replace').split()) if meta_info else '(none)'}")
    print("OK")
    return 0


def mode_string(entry: DirectoryEntry) -> str:
    return stat.filemode(entry.mode)


def long_line(path: str, entry: DirectoryEntry) -> str:
    size = entry.device_number if entry.is_special else entry.size
    line = f"{mode_string(entry)} {entry.linkcount} {size} {_iso_utc(entry.mtime)} {path or '/'}"
    return line + (f" -> {entry.symlink}" if entry.is_symlink else "")


def run_ls(args: argparse.Namespace) -> int:
    repository = open_repository(args)
    root = normalize_path(args.path)
    entry = repository.entry(root)
    if not entry.is_directory:
        rows = [(root, entry)]
    elif args.recursive:
        rows = list(repository.walk(root))
    else:
        rows = [(join(root, child.name), child) for child in repository.listdir(root)]
    out = sys.stdout
    for path, child in rows:
        out.write((long_line(path, child) if args.long else (path if args.recursive else child.name)) + "\n")
    return 0


def run_cat(args: argparse.Namespace) -> int:
    repository = open_repository(args)
    # Every piece is verified before it is written; a bad piece stops the output with an error.
    out = sys.stdout.buffer
    for piece in repository.iter_content(args.path):
        out.write(piece)
    out.flush()
    return 0


def run_tags(args: argparse.Namespace) -> int:
    repository = open_repository(args)
    for tag in repository.tags():
        print(f"{tag.name}\t{tag.revision}\t{utc_time(tag.timestamp)}\t{tag.root_hash}\t{tag.description}")
    return 0
