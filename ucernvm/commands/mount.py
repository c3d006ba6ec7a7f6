"""``ucernvm mount SOURCE MOUNTPOINT --key K``: mount one verified snapshot with FUSE."""

from __future__ import annotations

import argparse
import os
import time

from ucernvm.client import lazylog, logbuffer
from ucernvm.client.cache import DEFAULT_QUOTA, MIB, ObjectCache
from ucernvm.client.filesystem import SnapshotFilesystem
from ucernvm.client.fuse.kernel import FuseMount, MountOptions, mount, mounted_file_system
from ucernvm.client.fuse.operations import report
from ucernvm.client.prefetch import warn
from ucernvm.client.repository import Repository
from ucernvm.commands.repo import add_source_arguments, open_repository, source_config
from ucernvm.commands.umount import FUSE_TYPES
from ucernvm.errors import ConfigError, MountError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ucernvm.client.client_config import FetcherConfig, IdMap

DEFAULT_CACHE = "/var/lib/ucernvm/cache"
UNMOUNTED_WAIT = 10.0  # seconds a mount waits for the daemon of an unmounted one to end and free the cache


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mount",
        help="mount a snapshot read-only with FUSE",
        description="Mount one snapshot of a repository read-only at MOUNTPOINT. Every object is verified "
        "before it is served and kept in the cache directory; with every server down, the last verified "
        "revision in the cache is mounted. Returns once the mount is live and leaves a daemon serving it; "
        "`ucernvm umount MOUNTPOINT` ends it. The warnings it prints (a server or proxy switched, an older "
        "revision offered) open the daemon's log too, mount.log in the cache directory, where the daemon's own "
        "follow, each opening with 'ucernvm mount: warning:' (a switch, a cached copy removed and fetched again). SIGUSR1 to the daemon "
        "(its pid: the user.pid attribute of MOUNTPOINT) appends one line of JSON statistics to mount.log: "
        "requests by kind, downloads, cache hits; and writes read-order.txt beside it: the files read so far, "
        "in order, as a prefetch list. As cvmfs, a mount configured by --config files, or given CVMFS_HTTP_PROXY, "
        "must name a proxy (DIRECT for none); without either it fetches DIRECT.",
    )
    add_source_arguments(parser)
    parser.add_argument("mountpoint", metavar="MOUNTPOINT",
                        help="an existing directory that holds no FUSE mount yet")
    parser.add_argument("--cache", default=DEFAULT_CACHE, metavar="DIR",
                        help="cache directory, of one mount at a time: a second mount with it is refused while the "
                        "first one's daemon runs (default: %(default)s)")
    parser.add_argument("--quota", type=int, metavar="MIB",
                        help="cache size limit in MiB of 2^20 bytes, as cvmfs counts CVMFS_QUOTA_LIMIT (default: "
                        f"CVMFS_QUOTA_LIMIT, else {DEFAULT_QUOTA}; 0: none)")
    parser.add_argument("--threads", type=int, default=4, help="threads answering the kernel (default 4)")
    parser.add_argument("--prefetch", metavar="PATH", help="a prefetch list in the snapshot (e.g. /.ucernvm_prefetch): "
                        "the files it names are downloaded ahead in the background, in its order")
    parser.add_argument("--pin", metavar="PATH", help="a pin list in the snapshot (e.g. /.ucernvm_pinfiles): the files "
                        "it names (symlinks followed) are downloaded in the background and kept in the cache while "
                        "mounted, whatever the quota evicts (pinned bytes stop at half the quota)")
    parser.add_argument("--passthrough", action="store_true",
                        help="where the kernel offers FUSE passthrough (Linux 6.9+, as root), it reads the cached "
                        "object of a file stored whole (up to the publisher's minimum chunk size) itself, without "
                        "the daemon: reads of files not in the page cache run at the cache disk's speed, but every "
                        "open(2) then costs a request (default: off; opens are free, reads ask the daemon)")
    parser.add_argument(
        "--foreground", action="store_true", help="serve in this process until unmounted (errors on stderr; "
        "the daemon otherwise appends them to mount.log in the cache directory)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    logbuffer.hold()  # what is said before the fork goes to the daemon's log too, which opens only then
    lazylog.route(warn)  # a server or proxy switch reads as the mount's other warnings, as in its log
    try:
        repository, fuse = mount_snapshot(args)
    finally:
        opening = logbuffer.held()
        lazylog.route(None)  # the serving process routes its own (SnapshotFilesystem.init)
    if args.foreground:
        fuse.serve()
        return 0
    fuse.fork(log_path=os.path.join(args.cache, "mount.log"), before_serve=lambda: log_warnings(opening))
    os.stat(args.mountpoint)  # returns once the daemon answered the kernel: the mount is live
    print(f"mounted {repository.fqrn} revision {repository.revision} ({repository.root_hash}) on {args.mountpoint}")
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what can be refused before the repository is opened; the paths made absolute."""
    # A second FUSE mount there would hide the first (one umount then shows it again); one whose daemon is
    # gone is no directory to stat. Either wants an unmount first.
    mounted = fuse_mounted(os.path.realpath(args.mountpoint))
    if mounted is not None:
        raise MountError(f"{args.mountpoint} holds a {mounted} mount already",
                         hint=f"unmount it first: ucernvm umount {args.mountpoint}")
    if not os.path.isdir(args.mountpoint):
        raise ConfigError(f"mount point {args.mountpoint} is not a directory")
    if args.quota is not None and args.quota < 0:
        raise ConfigError("--quota must not be negative")
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    # The daemon leaves this directory (its cwd is / or the cache): relative paths would name others.
    args.cache, args.mountpoint = os.path.abspath(args.cache), os.path.abspath(args.mountpoint)
    if "://" not in args.source:  # a local repository directory, which the daemon reads every object from
        args.source = os.path.abspath(args.source)


def mount_snapshot(args: argparse.Namespace) -> tuple[Repository, FuseMount]:
    """The repository opened with the cache held, and its snapshot mounted, not served yet."""
    config = source_config(args)
    check_proxy(args, config)
    maps = owner_maps(config)
    quota = args.quota if args.quota is not None else config.quota_limit if config is not None else DEFAULT_QUOTA
    cache = ObjectCache(args.cache, quota * MIB if quota > 0 else None)  # CVMFS_QUOTA_LIMIT=-1: none
    lock_cache(cache, os.path.realpath(args.mountpoint))
    repository = open_repository(args, cache=cache, config=config)
    for warning in repository.warnings:
        warn(warning)
    filesystem = SnapshotFilesystem(repository, prefetch_list=args.prefetch, pin_list=args.pin, **maps)
    options = MountOptions(fsname=repository.fqrn, subtype="cvmfs", threads=args.threads, passthrough=args.passthrough)
    return repository, mount(filesystem, args.mountpoint, options)


def owner_maps(config: FetcherConfig | None) -> dict[str, IdMap]:
    """The owner maps CVMFS_UID_MAP and CVMFS_GID_MAP name, read before mounting: a malformed one is an error
    naming its file and line, as cvmfs refuses to mount then."""
    from ucernvm.client.client_config import read_id_map

    paths = {} if config is None else {"uid_map": config.uid_map, "gid_map": config.gid_map}
    return {name: read_id_map(path) for name, path in paths.items() if path}


def check_proxy(args: argparse.Namespace, config: FetcherConfig | None) -> None:
    """Refuse a mount configured as cvmfs is (--config files, or CVMFS_HTTP_PROXY given) that names no proxy:
    cvmfs does not mount then ("failed to discover HTTP proxy servers"), where an empty CVMFS_HTTP_PROXY
    would here fetch DIRECT, past the site's proxies. Without either, the command fetches DIRECT."""
    if config is None or config.http_proxy:
        return
    given = args.proxy is not None or any(option.partition("=")[0] == "CVMFS_HTTP_PROXY" for option in args.options)
    if given or args.config:
        raise ConfigError("no proxy is configured: CVMFS_HTTP_PROXY is "
                          + ("empty" if given else "empty or not set in the --config files"),
                          "set CVMFS_HTTP_PROXY=DIRECT (or --proxy DIRECT) to fetch from the servers without a "
                          "proxy, or name the proxies, e.g. 'http://squid:3128;DIRECT'")


def log_warnings(warnings: list[str]) -> None:
    """The warnings before the fork, which went to this command's stderr, in the daemon's log (its stderr) too."""
    for warning in warnings:
        report(f"ucernvm mount: warning: {warning}")


def lock_cache(cache: ObjectCache, mountpoint: str) -> None:
    """Hold the cache for this mount (its daemon inherits the lock); refused while another mount uses it.

    A mount just unmounted is waited for, a little: ``ucernvm umount --lazy``, umount(8) and fusermount -u return
    before its daemon has ended (``ucernvm umount`` waits for it)."""
    deadline = time.monotonic() + UNMOUNTED_WAIT
    while (holder := cache.lock(mountpoint)) is not None:
        serving = bool(holder) and fuse_mounted(holder) is not None
        if serving or time.monotonic() > deadline:
            raise MountError(f"the cache {cache.root} is in use by {_cache_user(holder, serving)}",
                             hint=(f"unmount it first (ucernvm umount {holder}), or " if serving else "")
                             + "give this mount a cache directory of its own (--cache)")
        time.sleep(0.05)


def _cache_user(holder: str, serving: bool) -> str:
    if not holder:
        return "another mount"
    if serving:
        return f"the mount on {holder}"
    return f"the mount on {holder}, not mounted there now: still starting, or unmounted with files open there"


def fuse_mounted(path: str) -> str | None:
    """The type of the FUSE file system mounted at ``path`` (absolute, without symlinks), if one is."""
    mounted = mounted_file_system(path)
    return mounted[1] if mounted is not None and mounted[1].split(".", 1)[0] in FUSE_TYPES else None
