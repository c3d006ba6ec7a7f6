"""The ``mount`` stage: the repository mounted by the FUSE daemon, the OS root assembled from it.

The daemon is a child of PID 1 that outlives it: it holds its descriptors (/dev/fuse, the cache
directory) and everything it imports is loaded before the switch, so the initramfs can be freed. Its
command line starts with '@', systemd's mark for storage daemons it must not kill at shutdown. The root
is an overlay of the snapshot's ``cernvm_path`` (read-only) and ``persistent/`` on the scratch disk; the
two layers stay visible in the OS as /mnt/.ro and /mnt/.rw, as in µCernVM. The owner maps a rebase wrote
(rebase.py: aux/uid_map, aux/gid_map) are applied by the mount, as µCernVM passes them to cvmfs.
"""

from __future__ import annotations

import ctypes
import os

from ucernvm.boot.rebase import GID_MAP, UID_MAP
from ucernvm.boot.state import BootState
from ucernvm.boot.system import MS_MOVE, Mount
from ucernvm.boot.untrusted import read_scratch, scratch_directory
from ucernvm.client.client_config import IdMap, parse_id_map
from ucernvm.client.boot_layer import find_boot_layer
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.filesystem import SnapshotFilesystem
from ucernvm.client.fuse.kernel import MountOptions, mount
from ucernvm.client.pinning import PIN_LIST
from ucernvm.client.prefetch import PREFETCH_LIST
from ucernvm.client.repository import Repository, normalize_path
from ucernvm.errors import ConfigError, MountError, StorageError

DAEMON_MARK = b"@"
MAP_LIMIT = 1 << 20  # bytes of an owner map: some 60,000 lines


def mark_storage_daemon() -> None:
    """Make this process's command line start with '@' (systemd spares such root processes).

    The kernel reports the argument strings from this process's own memory (arg_start in
    /proc/self/stat), so overwriting their first byte renames it, as setproctitle does.
    """
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    arg_start = int(fields[45])  # field 48 of proc(5), counted after the command name
    ctypes.memmove(arg_start, DAEMON_MARK, len(DAEMON_MARK))


class MountRepository:
    """Mount the snapshot with FUSE and leave a daemon serving it; applying returns the daemon's pid."""

    def __init__(self, repository: Repository, target: str, log_path: str, xattrs: bool,
                 prefetch_list: str | None = None, boot_layer: bool = False, pin_list: str | None = None,
                 os_root: str = "", owner_maps: dict[str, IdMap] | None = None) -> None:
        self.repository, self.target, self.log_path, self.xattrs = repository, target, log_path, xattrs
        self.prefetch_list, self.boot_layer, self.pin_list, self.os_root = prefetch_list, boot_layer, pin_list, os_root
        self.owner_maps = owner_maps or {}  # SnapshotFilesystem's uid_map and gid_map

    def describe(self) -> str:
        prefetch = f"; prefetching the files of {self.prefetch_list}" if self.prefetch_list else ""
        prefetch += ", then laying them out as the boot layer" if self.prefetch_list and self.boot_layer else ""
        prefetch += f"; pinning the files of {self.pin_list} in the cache" if self.pin_list else ""
        if self.owner_maps:
            prefetch += "; owners mapped by " + " and ".join(f"aux/{name}" for name in self.owner_maps)
        return (f"mount {self.repository.fqrn} with FUSE on {self.target} (daemon marked '@' for systemd; "
                f"extended attributes {'on' if self.xattrs else 'off'}{prefetch})")

    def apply(self) -> int:
        filesystem = SnapshotFilesystem(self.repository, prefetch_list=self.prefetch_list, boot_layer=self.boot_layer,
                                        pin_list=self.pin_list, os_root=self.os_root, **self.owner_maps)
        # Attributes with every listing: a Debian boot made 14 % fewer lookups (2,076 to 1,789) and 7 % fewer
        # requests in all than with the kernel's adaptive choice.
        options = MountOptions(fsname=self.repository.fqrn, subtype="cvmfs", xattrs=self.xattrs,
                               adaptive_readdirplus=False)
        if isinstance(self.repository.source, HttpSource):
            self.repository.source.load_for_later()
        fuse = mount(filesystem, self.target, options)
        pid = fuse.fork(log_path=self.log_path, before_serve=mark_storage_daemon)
        os.stat(self.target)  # returns once the daemon answered the kernel
        return pid


def mount_stage(state: BootState) -> None:
    system, repository, config = state.system, state.repository, state.config
    read_only, scratch, new_root = state.read_only, state.scratch, state.new_root
    os_directory = repository.lookup(config.os_path)
    if os_directory is None or not os_directory.is_directory:
        raise MountError(
            f"the snapshot has no directory {config.os_path or '/'!r} to boot",
            "set cernvm_path= to the OS directory of the repository",
        )
    xattrs = config.xattrs == "on" or (config.xattrs == "auto" and repository.stores_xattrs())
    log = str(scratch / "cache" / "mount.log")
    prefetch_list = _os_file(repository, config.os_path, PREFETCH_LIST) if config.prefetch else None
    pin_list = _os_file(repository, config.os_path, PIN_LIST)
    use_layer = bool(prefetch_list) and config.boot_layer and not xattrs
    if not system.dry_run:
        _hold_the_cache(state)
    maps = owner_maps(state)
    state.fuse_pid = system.do(MountRepository(repository, str(read_only), log, xattrs, prefetch_list, use_layer,
                                               pin_list, config.os_path, maps))
    lower = str(read_only / config.os_path.strip("/"))
    # The boot layer of an earlier boot of this snapshot, above the mount: the kernel reads its files itself.
    boot_layer = find_boot_layer(str(scratch / "cache"), repository.root_hash.hex, prefetch_list) if use_layer else None
    if boot_layer is not None:
        lower = f"{boot_layer}:{lower}"
    options = f"lowerdir={lower},upperdir={scratch / 'persistent'},workdir={scratch / 'work'}"
    system.do(Mount("overlay", str(new_root), "overlay", options))
    move_layers(state)
    state.facts["root"] = {"lower": str(lower), "upper": str(scratch / "persistent"), "fuse_pid": state.fuse_pid,
                           "xattrs": xattrs, "prefetch_list": prefetch_list, "boot_layer": boot_layer,
                           "pin_list": pin_list, "owner_maps": sorted(f"aux/{name}" for name in maps)}


def owner_maps(state: BootState) -> dict[str, IdMap]:
    """The owner maps of the scratch disk (a rebase's, rebase.py), as SnapshotFilesystem's uid_map and gid_map. The
    OS may have written them: one it spoiled is a warning, and that map is not applied."""
    maps = {}
    for relative in (UID_MAP, GID_MAP):
        unusable = f"the snapshot's owners are shown without {relative}"
        data = read_scratch(state, relative, MAP_LIMIT, unusable)
        if data is None:
            continue
        try:
            maps[relative.rsplit("/", 1)[1]] = parse_id_map(data.decode("utf-8", "replace"), relative)
        except ConfigError as error:
            state.warn(f"{error.message} on the scratch disk: {unusable}")
    return maps


def move_layers(state: BootState) -> None:
    """Move the scratch disk and the repository's mount to /mnt/.rw and /mnt/.ro in the OS's root, where
    no link the OS left is followed (it would take a mount over any directory of the loader's)."""
    for layer, inside in ((state.scratch, "mnt/.rw"), (state.read_only, "mnt/.ro")):
        scratch_directory(state, inside, f"/{inside} in the OS's root", root=state.new_root)
        state.system.do(Mount(str(layer), str(state.new_root / inside), None, flags=MS_MOVE))
    if not state.system.dry_run:
        state.scratch_moved_to = state.new_root / "mnt" / ".rw"


def _hold_the_cache(state: BootState) -> None:
    """Lock the cache for the daemon, as ``ucernvm mount`` locks its own: a mount in the booted OS on the same
    directory (/mnt/.rw/cache) is then refused instead of fighting the daemon over the quota and the pins.
    PID 1 takes it and the daemon inherits it; PID 1's exec of the OS's init lets go of its copy. On a fresh
    boot nobody else holds it; a lock file the OS spoiled (a FIFO in its place) costs only the lock."""
    try:
        state.repository.cache.lock(str(state.read_only))
    except StorageError as error:
        state.warn(f"{error.message}: a mount in the OS could use the boot's cache alongside it")


def _os_file(repository: Repository, os_path: str, name: str) -> str | None:
    """A list at the OS's root (the prefetch list, client/prefetch.py; the pin list, client/pinning.py), if
    the snapshot has it."""
    path = normalize_path(f"{os_path}/{name}")
    entry = repository.lookup(path)
    return path if entry is not None and entry.is_regular else None
