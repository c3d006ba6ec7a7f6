"""Serve ``Operations`` over the kernel's FUSE protocol on /dev/fuse, without libfuse.

Hand-written rather than built on pyfuse3 or fusepy: it needs no shared library beyond libc, imports
only modules the boot image has anyway, and starts in milliseconds, which counts inside an
initramfs running under emulation (docs/benchmarks.md has the comparison).

``mount()`` opens /dev/fuse and calls mount(2); the returned ``FuseMount`` serves requests with
worker threads that all read the same descriptor. Once the workers have answered INIT (at
once, after ``start``), nothing depends on paths any more: every module and library is loaded
and the server only uses its descriptor, so it survives the mount being moved or a switch_root.
The server stops when the file system is unmounted (the kernel then fails reads with ENODEV).

Structure layouts and constants are those of the kernel's include/uapi/linux/fuse.h (protocol
7.40); only the read-only subset is answered, every write is refused with EROFS.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import itertools
import os
import signal
import stat
import struct
import sys
import threading
import time

from ucernvm.client import logbuffer
from ucernvm.client.fuse.handles import InodeHandles
from ucernvm.client.fuse.operations import Attributes, DirEntry, Operations, report
from ucernvm.client.fuse.passthrough import BackingFiles
from ucernvm.client.fuse.splice import PAGE, ReplySplicer
from ucernvm.errors import MountError
from ucernvm.utc import utc_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, TextIO

# How a serving process uses memory (see _tune_memory_for_serving).
GC_THRESHOLD = 100_000  # allocations between collections of the youngest generation
MALLOC_KEEP_BYTES = 32 << 20  # above the largest cvmfs chunk (24 MiB)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters

# Reads this large go out spliced (splice.py): below it, the pipe's extra system calls cost more than
# the copy saved (a tree of 2 KiB files read 8 % slower spliced; a 256 MiB file 10 % faster).
SPLICE_MIN_BYTES = 64 << 10

MAX_READ_PAGES = (1 << 20) // PAGE  # the largest READ asked for: 1 MiB

# --- protocol (include/uapi/linux/fuse.h) -------------------------------------------------------

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 40

LOOKUP = 1
FORGET = 2
GETATTR = 3
SETATTR = 4
READLINK = 5
SYMLINK = 6
MKNOD = 8
MKDIR = 9
UNLINK = 10
RMDIR = 11
RENAME = 12
LINK = 13
OPEN = 14
READ = 15
WRITE = 16
STATFS = 17
RELEASE = 18
FSYNC = 20
SETXATTR = 21
GETXATTR = 22
LISTXATTR = 23
REMOVEXATTR = 24
FLUSH = 25
INIT = 26
OPENDIR = 27
READDIR = 28
RELEASEDIR = 29
FSYNCDIR = 30
CREATE = 35
INTERRUPT = 36
DESTROY = 38
IOCTL = 39
POLL = 40
BATCH_FORGET = 42
FALLOCATE = 43
READDIRPLUS = 44
RENAME2 = 45
COPY_FILE_RANGE = 47
TMPFILE = 51

# Requests that would change the tree.
MUTATING = frozenset(
    {SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, WRITE, SETXATTR, REMOVEXATTR,
     CREATE, FALLOCATE, RENAME2, COPY_FILE_RANGE, TMPFILE}
)

# Names of the requests a read-only server sees, for its statistics.
_OPCODE_NAMES = {globals()[name]: name.lower() for name in (
    "LOOKUP", "FORGET", "GETATTR", "READLINK", "OPEN", "READ", "STATFS", "RELEASE", "GETXATTR", "LISTXATTR",
    "FLUSH", "INIT", "OPENDIR", "READDIR", "RELEASEDIR", "INTERRUPT", "DESTROY", "IOCTL", "POLL", "BATCH_FORGET",
    "READDIRPLUS")}

# INIT flags
ASYNC_READ = 1 << 0
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
NO_OPEN_SUPPORT = 1 << 17  # offered by the kernel: ENOSYS to OPEN stops OPEN and RELEASE
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24  # the same for OPENDIR and RELEASEDIR
INIT_EXT = 1 << 30  # the flags go on in flags2 (init_in and init_out)
PASSTHROUGH = 1 << 37  # in flags2: files may be read by the kernel from a backing file (passthrough.py)
MAX_STACK_DEPTH = 1  # the backing files' file system is not stacked; an overlayfs may still go on top

# open_out flags
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_PASSTHROUGH = 1 << 7

IN_HEADER = struct.Struct("=IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
OUT_HEADER = struct.Struct("=IiQ")  # len, error, unique
INIT_IN = struct.Struct("=IIII")  # major, minor, max_readahead, flags
INIT_IN_FLAGS2 = struct.Struct("=16xI")  # from 7.36 on
# major, minor, max_readahead, flags, max_background, congestion_threshold, max_write, time_gran,
# max_pages, map_alignment, flags2, max_stack_depth, unused[6]
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")
COMPAT_INIT_OUT_SIZE = 8  # before 7.5
COMPAT_22_INIT_OUT_SIZE = 24  # before 7.23
_ATTR = "QQQQQQIIIIIIIIII"  # ino size blocks atime mtime ctime {a,m,c}timensec mode nlink uid gid rdev blksize flags
ENTRY_OUT = struct.Struct("=QQQQII" + _ATTR)  # nodeid generation entry_valid attr_valid {entry,attr}_valid_nsec attr
ATTR_OUT = struct.Struct("=QII" + _ATTR)  # attr_valid attr_valid_nsec dummy attr
FORGET_IN = struct.Struct("=Q")
BATCH_FORGET_IN = struct.Struct("=II")  # count, dummy; then count x FORGET_ONE
FORGET_ONE = struct.Struct("=QQ")  # nodeid, nlookup
OPEN_IN = struct.Struct("=II")  # flags, open_flags
OPEN_OUT = struct.Struct("=QIi")  # fh, open_flags, backing_id
READ_IN = struct.Struct("=QQIIQII")  # fh offset size read_flags lock_owner flags padding
RELEASE_IN = struct.Struct("=QIIQ")  # fh flags release_flags lock_owner
GETXATTR_IN = struct.Struct("=II")  # size padding; then the NUL-terminated name
GETXATTR_OUT = struct.Struct("=II")  # size padding
KSTATFS = struct.Struct("=QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize padding spare[6]
DIRENT = struct.Struct("=QQII")  # ino off namelen type; then the name, padded to 8 bytes
DIRENT_PLUS = struct.Struct("=QQQQII" + _ATTR + "QQII")  # entry_out, then dirent

FUSE_MIN_READ_BUFFER = 8192
ROOT_MODE = 0o40000
MS_RDONLY = 1
MNT_DETACH = 2

_PADDING = bytes(8)
_NO_REPLY = None


class MountOptions:
    """How a tree is mounted and served; the defaults suit an immutable tree."""

    __slots__ = ("fsname", "subtype", "threads", "cache_timeout", "readdirplus", "adaptive_readdirplus", "read_ahead_kb",
                 "max_write", "max_background", "allow_other", "zero_message_open", "xattrs", "splice_reads",
                 "passthrough")

    def __init__(
        self,
        fsname: str = "ucernvm",
        subtype: str = "ucernvm",
        threads: int = 4,  # several, so a slow read (a network fetch) does not stall lookups
        cache_timeout: float = 86400.0 * 365,  # entries and attributes never change
        readdirplus: bool = True,  # listings carry attributes: `ls -l` and `find` skip lookups
        # True: after a listing's first request, the kernel asks for attributes only where lookups followed
        # (libfuse's default); False: always, which suits a booting OS, that looks up most of what it lists.
        adaptive_readdirplus: bool = True,
        read_ahead_kb: int | None = 1024,  # None keeps the kernel's default (128 KiB)
        max_write: int = 128 * 1024,  # never written to; sizes the request buffer
        max_background: int = 32,  # asynchronous (readahead) requests in flight
        allow_other: bool = True,
        zero_message_open: bool = True,  # no OPEN/RELEASE round trips where the kernel allows (handles.py)
        # False: the first GETXATTR (LISTXATTR) is answered ENOSYS, and the kernel answers later ones
        # itself (EOPNOTSUPP): overlayfs asks one of every lower file it looks up, exec one per program.
        xattrs: bool = True,
        splice_reads: bool = True,  # reads of operations with read_spans go out spliced (splice.py)
        # Files with a backing file (Operations.backing_fd) are read by the kernel itself where it offers
        # passthrough (passthrough.py); OPEN and RELEASE then come for every file, zero_message_open or not:
        # reads from the disk gain, opens of files in the page cache lose (a round trip each, where
        # zero-message opens cost none), so the trade is the user's.
        passthrough: bool = False,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.fsname = fsname
        self.subtype = subtype
        self.threads = threads
        self.cache_timeout = cache_timeout
        self.readdirplus = readdirplus
        self.adaptive_readdirplus = adaptive_readdirplus
        self.read_ahead_kb = read_ahead_kb
        self.max_write = max_write
        self.max_background = max_background
        self.allow_other = allow_other
        self.zero_message_open = zero_message_open
        self.xattrs = xattrs
        self.splice_reads = splice_reads
        self.passthrough = passthrough


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def mount(ops: Operations, mountpoint: str, options: MountOptions | None = None) -> FuseMount:
    """Mount ``ops`` read-only at ``mountpoint``; serve it with ``FuseMount.serve`` or ``start``.

    Accesses to the mount block until a worker answers the kernel's INIT request.
    """
    options = options or MountOptions()
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        raise MountError(f"cannot open /dev/fuse: {error.strerror}",
                         hint="load the fuse kernel module and run as root") from None
    data = (f"fd={fd},rootmode={ROOT_MODE:o},user_id={os.getuid()},group_id={os.getgid()},"
            "default_permissions" + (",allow_other" if options.allow_other else ""))
    target = os.path.realpath(mountpoint)  # resolved now: once mounted, lstat() on it waits for INIT
    if _libc.mount(options.fsname.encode(), os.fsencode(target), f"fuse.{options.subtype}".encode(),
                   MS_RDONLY, data.encode()) != 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise MountError(f"cannot mount FUSE at {mountpoint}: {os.strerror(code)}",
                         hint="the mount point must be an existing directory and the caller root")
    return FuseMount(ops, fd, target, options)


def unmount(mountpoint: str, lazy: bool = True) -> None:
    """umount2(2); ``lazy`` detaches it at once even while files are open (MNT_DETACH)."""
    if _libc.umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0) != 0:
        code = ctypes.get_errno()
        raise MountError(f"cannot unmount {mountpoint}: {os.strerror(code)}")


def mounted_file_system(mountpoint: str) -> tuple[str, str] | None:
    """``(major:minor, type)`` of the file system mounted last at ``mountpoint`` (an absolute path
    without symlinks), from mountinfo; a snapshot's type is ``fuse.cvmfs``.

    Read there because stat() on a FUSE mount would wait for INIT, which nobody may serve yet.
    """
    escaped = mountpoint
    for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
        escaped = escaped.replace(char, code)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                mount_fields, _, file_system_fields = line.partition(" - ")  # spaces in paths are escaped
                fields = mount_fields.split(" ", 5)
                if fields[4] == escaped:
                    found = fields[2], file_system_fields.split(" ", 1)[0]
    except OSError:
        return None
    return found


class FuseMount:
    """One mounted connection: worker threads read requests from ``fd`` and write replies."""

    def __init__(self, ops: Operations, fd: int, mountpoint: str, options: MountOptions) -> None:
        self.ops = ops
        self.fd = fd
        self.mountpoint = mountpoint
        self.options = options
        mounted = mounted_file_system(mountpoint)
        self.device = mounted[0] if mounted is not None else None
        self._bufsize = max(FUSE_MIN_READ_BUFFER, options.max_write + 8192)
        self.read_pages = self._largest_read_pages()
        seconds = int(options.cache_timeout)
        self._timeout = (seconds, int((options.cache_timeout - seconds) * 1e9))
        self._negative_entry = ENTRY_OUT.pack(0, 0, seconds, 0, self._timeout[1], 0, *_attr(None))
        self._handles: dict[int, Any] = {}
        # Used once INIT turned OPEN/OPENDIR off: reads and listings then name only the inode.
        self._file_handles = InodeHandles(lambda ino: ops.open(ino, os.O_RDONLY), ops.release)
        self._dir_handles = InodeHandles(ops.opendir, ops.releasedir, capacity=128)
        self._no_open = False
        self._no_opendir = False
        self._no_open_offered = False
        self._backing: BackingFiles | None = None  # while passthrough is on
        self._passthrough_status = "off"
        self._next_handle = itertools.count(1).__next__  # atomic under the GIL
        self._threads: list[threading.Thread] = []
        self._request_counts: list[dict[int, int]] = []  # one per worker: no lock on the hot path
        self._destroy_lock = threading.Lock()
        self._destroyed = False
        self._initialized = False
        self._handlers = {
            INIT: self._init,
            DESTROY: self._destroy,
            LOOKUP: self._lookup,
            FORGET: self._forget,
            BATCH_FORGET: self._batch_forget,
            GETATTR: self._getattr,
            READLINK: self._readlink,
            OPEN: self._open,
            READ: self._read,
            RELEASE: self._release,
            OPENDIR: self._opendir,
            READDIR: self._readdir,
            READDIRPLUS: self._readdirplus,
            RELEASEDIR: self._release,
            STATFS: self._statfs,
        }
        if options.xattrs:
            self._handlers |= {GETXATTR: self._getxattr, LISTXATTR: self._listxattr}

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads and return; ``join`` waits for the unmount."""
        for index in range(self.options.threads):
            thread = threading.Thread(target=self._worker, name=f"fuse-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the workers stopped (after the unmount); True when they all did."""
        for thread in self._threads:
            thread.join(timeout)
        stopped = not any(thread.is_alive() for thread in self._threads)
        if stopped:
            self._finish()
        return stopped

    def serve(self) -> None:
        """Serve until the file system is unmounted (the process's work from here on). SIGUSR1 writes
        the statistics to stderr (the daemon's log), as one line of JSON, and has the file system save
        its records (a snapshot's mount: the order files were read in, see client/prefetch.py)."""
        _tune_memory_for_serving()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, lambda *_: self._report_statistics())
        self.start()
        self.join()

    def statistics(self) -> dict[str, Any]:
        """Requests answered so far, by kind, and what the file system reports of itself."""
        requests: dict[str, int] = {}
        for counts in list(self._request_counts):
            for opcode, count in list(counts.items()):
                name = _OPCODE_NAMES.get(opcode, f"opcode {opcode}")
                requests[name] = requests.get(name, 0) + count
        passthrough = {"status": self._passthrough_status,
                       "opens": self._backing.opens if self._backing is not None else 0}
        return {"requests": dict(sorted(requests.items(), key=lambda item: -item[1])), "passthrough": passthrough,
                **self.ops.statistics()}

    def _report_statistics(self) -> None:
        import json  # only when asked

        _report(f"statistics {json.dumps(self.statistics(), sort_keys=False)}")
        try:
            self.ops.save_records()
        except OSError as error:
            _report(f"cannot save the file system's records: {error.strerror}")
        except Exception as error:  # a bug there must not stop the server (this runs in its main thread)
            _report(f"cannot save the file system's records: {error!r}")

    def fork(self, log_path: str | None = None, before_serve: Callable[[], None] | None = None) -> int:
        """Serve from a child process, detached from this one's session; returns its pid.

        The child's stdin and stdout go to /dev/null and its stderr (its error reports) to ``log_path``
        (appended), so it holds no pipe or terminal of its parent open; ``before_serve`` runs in the
        child first. Call before starting any thread in this process (threads do not survive a fork).
        """
        log = _open_log(log_path) if log_path else -1  # opened here, where a warning that it cannot be is read
        pid = os.fork()
        if pid:
            os.close(self.fd)
            self.fd = -1
            if log >= 0:
                os.close(log)
            return pid
        status = 1
        try:
            os.setsid()
            os.chdir("/")
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log if log >= 0 else null, 2)
            os.close(null)
            if log >= 0:
                os.close(log)
            sys.stderr = _TimedLines(sys.stderr)
            if before_serve is not None:
                before_serve()
            self.serve()
            status = 0
        except BaseException as error:
            _report(f"the server stopped: {error!r}")
        finally:
            os._exit(status)  # never return into the parent's code

    def unmount(self, lazy: bool = True) -> None:
        unmount(self.mountpoint, lazy)

    def _finish(self) -> None:
        self._file_handles.clear()
        self._dir_handles.clear()
        self._call_destroy()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _call_destroy(self) -> None:
        with self._destroy_lock:
            if self._destroyed or not self._initialized:
                return
            self._destroyed = True
        self.ops.destroy()

    def _worker(self) -> None:
        splicer = ReplySplicer.create() if self.options.splice_reads else None
        try:
            self._serve_requests(splicer)
        finally:
            if splicer is not None:
                splicer.close()

    def _serve_requests(self, splicer: ReplySplicer | None) -> None:
        fd = self.fd
        buffer = bytearray(self._bufsize)
        view = memoryview(buffer)
        handlers = self._handlers
        counts: dict[int, int] = {}
        self._request_counts.append(counts)
        while True:
            try:
                length = os.readv(fd, (buffer,))
            except OSError as error:
                if error.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue  # the request was interrupted before we got it
                if error.errno != errno.ENODEV:  # ENODEV: unmounted or aborted
                    _report(f"reading /dev/fuse failed: {error}")
                return
            _, opcode, unique, nodeid = IN_HEADER.unpack_from(buffer)[:4]
            counts[opcode] = counts.get(opcode, 0) + 1
            handler = handlers.get(opcode)
            try:
                if handler is None:
                    raise OSError(errno.EROFS if opcode in MUTATING else errno.ENOSYS, "")
                if opcode == READ:  # the one reply that may go out by itself, spliced
                    reply = self._read(nodeid, view[IN_HEADER.size:length], unique, splicer)
                else:
                    reply = handler(nodeid, view[IN_HEADER.size:length])
                if reply is _NO_REPLY:
                    continue
                # Two buffers, not header + reply: a read's reply is up to 1 MiB, copied for nothing.
                os.writev(fd, (OUT_HEADER.pack(OUT_HEADER.size + len(reply), 0, unique), reply))
                if opcode == INIT:
                    self._tune_readahead()
                continue
            except OSError as error:
                code = error.errno or errno.EIO
            except Exception as error:  # a bug in a file system must not kill the server
                _report(f"request {opcode} on inode {nodeid} failed: {error!r}")
                code = errno.EIO
            try:
                os.write(fd, OUT_HEADER.pack(OUT_HEADER.size, -code, unique))
            except OSError as error:
                if error.errno not in (errno.ENOENT, errno.ENODEV):  # interrupted, or unmounted
                    _report(f"replying to request {opcode} failed: {error}")

    def _largest_read_pages(self) -> int:
        """Pages of the largest READ to ask for: 1 MiB, or what a spliced reply carries if that is less
        (a pipe of the default 1 MiB: 253 pages), so that full-size reads are spliced too."""
        splicer = ReplySplicer.create() if self.options.splice_reads else None
        if splicer is None:
            return MAX_READ_PAGES
        try:
            return min(MAX_READ_PAGES, splicer.data_pages)
        finally:
            splicer.close()

    def _tune_readahead(self) -> None:
        """Raise the readahead window past the kernel's offer, which INIT can only shrink; to a whole
        number of the largest READs, so that a window does not end in a sliver of a request."""
        if self.options.read_ahead_kb is None or self.device is None:
            return
        read_kb = self.read_pages * PAGE // 1024
        window_kb = self.options.read_ahead_kb
        if window_kb > read_kb:
            window_kb -= window_kb % read_kb
        try:
            with open(f"/sys/class/bdi/{self.device}/read_ahead_kb", "w") as knob:
                knob.write(str(window_kb))
        except OSError:
            pass  # no /sys (early boot): the default window still works

    # --- handlers: (nodeid, payload) -> reply bytes, or None for no reply ----------------------

    def _init(self, nodeid: int, payload: memoryview) -> bytes:
        major, minor, max_readahead, flags = INIT_IN.unpack_from(payload)
        if major != KERNEL_VERSION:
            # A newer major: answer with ours and the kernel retries; an older one is unsupported.
            if major < KERNEL_VERSION:
                raise OSError(errno.EPROTO, "FUSE protocol too old")
            return INIT_OUT.pack(KERNEL_VERSION, KERNEL_MINOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        want = ASYNC_READ | PARALLEL_DIROPS | CACHE_SYMLINKS | MAX_PAGES
        if self.options.readdirplus:
            want |= DO_READDIRPLUS | (READDIRPLUS_AUTO if self.options.adaptive_readdirplus else 0)
        if flags & INIT_EXT and len(payload) >= INIT_IN_FLAGS2.size:
            flags |= INIT_IN_FLAGS2.unpack_from(payload)[0] << 32
        if self.options.zero_message_open:
            self._no_open_offered = bool(flags & NO_OPEN_SUPPORT)
            self._no_opendir = bool(flags & NO_OPENDIR_SUPPORT)
        passthrough = self.options.passthrough and self.ops.has_backing_files
        if passthrough and flags & PASSTHROUGH:
            want |= INIT_EXT | PASSTHROUGH  # and OPEN must come: it is where a file gets its backing file
            self._backing = BackingFiles(self.fd)
            self._passthrough_status = "on"
        else:
            self._no_open = self._no_open_offered
            self._passthrough_status = "not offered by the kernel" if passthrough else "off"
        self.ops.init()
        self._initialized = True
        granted = flags & want
        reply = INIT_OUT.pack(
            KERNEL_VERSION, KERNEL_MINOR_VERSION, max_readahead, granted & 0xFFFFFFFF,
            self.options.max_background, self.options.max_background * 3 // 4,
            self.options.max_write, 1, self.read_pages, 0,  # time_gran 1 ns; max_pages: the largest READ
            granted >> 32, MAX_STACK_DEPTH if granted & PASSTHROUGH else 0,
        )
        if minor < 5:
            return reply[:COMPAT_INIT_OUT_SIZE]
        return reply[:COMPAT_22_INIT_OUT_SIZE] if minor < 23 else reply

    def _destroy(self, nodeid: int, payload: memoryview) -> bytes:
        self._call_destroy()
        return b""

    def _entry(self, a: Attributes) -> bytes:
        seconds, nanoseconds = self._timeout
        return ENTRY_OUT.pack(a.ino, 0, seconds, seconds, nanoseconds, nanoseconds, *_attr(a))

    def _lookup(self, nodeid: int, payload: memoryview) -> bytes:
        name = bytes(payload)
        try:
            attributes = self.ops.lookup(nodeid, name[: name.index(0)])
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise
            # A negative entry with a timeout: the kernel caches the miss (ld.so and Python probe a lot).
            return self._negative_entry
        return self._entry(attributes)

    def _forget(self, nodeid: int, payload: memoryview) -> None:
        self._forget_all(((nodeid, FORGET_IN.unpack_from(payload)[0]),))
        return _NO_REPLY

    def _batch_forget(self, nodeid: int, payload: memoryview) -> None:
        count = BATCH_FORGET_IN.unpack_from(payload)[0]
        self._forget_all(list(FORGET_ONE.iter_unpack(payload[BATCH_FORGET_IN.size : BATCH_FORGET_IN.size + count * FORGET_ONE.size])))
        return _NO_REPLY

    def _forget_all(self, inodes: Sequence[tuple[int, int]]) -> None:
        # FORGET comes when the kernel evicts the inode: no open file and no listing uses it any more.
        if self._no_open or self._no_opendir:
            for ino, _ in inodes:
                self._file_handles.forget(ino)
                self._dir_handles.forget(ino)
        self.ops.forget(inodes)

    def _getattr(self, nodeid: int, payload: memoryview) -> bytes:
        seconds, nanoseconds = self._timeout
        return ATTR_OUT.pack(seconds, nanoseconds, 0, *_attr(self.ops.getattr(nodeid)))

    def _readlink(self, nodeid: int, payload: memoryview) -> bytes:
        return bytes(self.ops.readlink(nodeid))

    def _open(self, nodeid: int, payload: memoryview) -> bytes:
        if self._no_open:
            raise OSError(errno.ENOSYS, "")  # the kernel opens files on its own from now on
        flags = OPEN_IN.unpack_from(payload)[0]
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise OSError(errno.EROFS, "read-only file system")
        handle = self._next_handle()
        opened = self.ops.open(nodeid, flags)
        backing_id = self._backing_id(nodeid, opened)
        if backing_id is not None:
            self.ops.release(opened)  # the kernel holds the backing file from here on
            self._handles[handle] = _Passthrough(nodeid)
            return OPEN_OUT.pack(handle, FOPEN_PASSTHROUGH, backing_id)  # the kernel allows no cache flag with it
        self._handles[handle] = opened
        return OPEN_OUT.pack(handle, FOPEN_KEEP_CACHE, 0)

    def _backing_id(self, nodeid: int, opened: Any) -> int | None:
        """The backing id the kernel is to read ``nodeid`` from, or None to serve its reads here."""
        backing = self._backing
        if backing is None:
            return None
        try:
            return backing.open(nodeid, lambda: self.ops.backing_fd(opened))
        except OSError as error:
            self._passthrough_refused(backing, error)
            return None

    def _passthrough_refused(self, backing: BackingFiles, error: OSError) -> None:
        """Without CAP_SYS_ADMIN, or with the cache on a stacked file system (ELOOP), the kernel refuses every
        backing file: the mount goes on without passthrough, and without OPEN where the kernel allows."""
        if not backing.accepting:
            return
        backing.accepting = False  # inodes open with a backing file keep it until released
        self._passthrough_status = f"refused by the kernel: {os.strerror(error.errno or errno.EIO)}"
        _report(f"passthrough {self._passthrough_status}; the daemon serves every read")
        if not backing.opens:
            self._no_open = self._no_open_offered

    def _read(self, nodeid: int, payload: memoryview, unique: int = 0,
              splicer: ReplySplicer | None = None) -> bytes | memoryview | None:
        handle, offset, size = READ_IN.unpack_from(payload)[:3]
        if handle or not self._no_open:
            return self._read_from(self._handles[handle], offset, size, unique, splicer)
        slot = self._file_handles.acquire(nodeid)
        try:  # the handle's descriptors stay open until the reply is out, spliced or not
            return self._read_from(slot.handle, offset, size, unique, splicer)
        finally:
            self._file_handles.done(slot)

    def _read_from(self, handle: Any, offset: int, size: int, unique: int,
                   splicer: ReplySplicer | None) -> bytes | memoryview | None:
        if splicer is not None and size >= SPLICE_MIN_BYTES:
            spans = self.ops.read_spans(handle, offset, size)
            if spans:
                length = OUT_HEADER.size + sum(span[2] for span in spans)
                if splicer.send(self.fd, OUT_HEADER.pack(length, 0, unique), spans):
                    return _NO_REPLY
        data = self.ops.read(handle, offset, size)
        return data if len(data) <= size else data[:size]  # a longer reply would be refused as a whole

    def _release(self, nodeid: int, payload: memoryview) -> bytes:
        handle = self._handles.pop(RELEASE_IN.unpack_from(payload)[0], None)
        if handle is not None:
            if isinstance(handle, _Passthrough):
                self._backing.release(handle.ino)  # type: ignore[union-attr]
            elif isinstance(handle, _DirHandle):
                self.ops.releasedir(handle.handle)
            else:
                self.ops.release(handle)
        return b""

    def _opendir(self, nodeid: int, payload: memoryview) -> bytes:
        if self._no_opendir:
            raise OSError(errno.ENOSYS, "")
        handle = self._next_handle()
        self._handles[handle] = _DirHandle(self.ops.opendir(nodeid))
        return OPEN_OUT.pack(handle, FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, 0)

    def _listing(self, nodeid: int, payload: memoryview, encode: Callable[[bytearray, DirEntry], object],
                 fixed_size: int) -> bytes:
        """A READDIR(PLUS) reply: as many entries after the offset as fit the kernel's buffer, each
        ``encode``d onto the reply (``fixed_size`` bytes and the name), padded to 8 bytes."""
        handle, offset, size = READ_IN.unpack_from(payload)[:3]
        slot = None
        if handle or not self._no_opendir:
            directory = self._handles[handle].handle
        else:
            slot = self._dir_handles.acquire(nodeid)
            directory = slot.handle
        out = bytearray()
        try:
            for entry in self.ops.readdir(directory, offset):
                if len(out) + (fixed_size + len(entry.name) + 7 & ~7) > size:
                    break
                encode(out, entry)
                out += _PADDING[: -len(out) % 8]
        finally:
            if slot is not None:
                self._dir_handles.done(slot)
        return bytes(out)

    def _readdir(self, nodeid: int, payload: memoryview) -> bytes:
        def encode(out: bytearray, entry: DirEntry) -> None:
            out += DIRENT.pack(entry.attributes.ino, entry.next_offset, len(entry.name),
                               entry.attributes.mode >> 12 & 0o17)
            out += entry.name

        return self._listing(nodeid, payload, encode, DIRENT.size)

    def _readdirplus(self, nodeid: int, payload: memoryview) -> bytes:
        seconds, nanoseconds = self._timeout
        pack = DIRENT_PLUS.pack

        def encode(out: bytearray, entry: DirEntry) -> None:
            # The fields of _attr() inlined: made for every entry of every listing, where building its
            # tuple cost a third of the encoding.
            name, (ino, mode, size, nlink, uid, gid, mtime_ns, rdev), next_offset = entry
            mtime, mtime_nsec = divmod(mtime_ns, 1_000_000_000)
            out += pack(ino, 0, seconds, seconds, nanoseconds, nanoseconds,
                        ino, size, (size + 511) >> 9, mtime, mtime, mtime, mtime_nsec, mtime_nsec, mtime_nsec,
                        mode, nlink, uid, gid, rdev, 4096, 0,
                        ino, next_offset, len(name), mode >> 12 & 0o17)
            out += name

        return self._listing(nodeid, payload, encode, DIRENT_PLUS.size)

    def _statfs(self, nodeid: int, payload: memoryview) -> bytes:
        stats = self.ops.statfs()
        return KSTATFS.pack(stats.blocks, stats.free, stats.free, stats.files, stats.free_files, stats.block_size,
                            stats.name_max, stats.block_size, 0)

    def _getxattr(self, nodeid: int, payload: memoryview) -> bytes:
        size = GETXATTR_IN.unpack_from(payload)[0]
        name = bytes(payload[GETXATTR_IN.size :])
        value = bytes(self.ops.getxattr(nodeid, name[: name.index(0)]))
        return _sized(value, size)

    def _listxattr(self, nodeid: int, payload: memoryview) -> bytes:
        size = GETXATTR_IN.unpack_from(payload)[0]
        return _sized(b"".join(name + b"\0" for name in self.ops.listxattr(nodeid)), size)


def _tune_memory_for_serving() -> None:
    # A file system keeps a few objects for every entry it meets, for the life of the mount. At
    # the default threshold (700 allocations) the collector rescans that growing heap again and
    # again: a third of the CPU of a 100k-entry walk. Cycles are still collected, in larger
    # batches, and what exists now (modules, the catalogs' connections) is never scanned again.
    # (The boot's PID 1, which forks the daemon, runs with the collector off.)
    gc.enable()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    # Every read's reply, every piece of a download and every block it inflates to is a fresh buffer
    # of up to 1 MiB, which glibc maps anew (above its mmap threshold) or takes from a heap whose top
    # it gave back: each of its pages then faults and is zeroed again, a fifth of a cold read's CPU
    # natively and more under emulation. Kept in the heap instead, freed buffers serve the next requests.
    _libc.mallopt(M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES)
    _libc.mallopt(M_TRIM_THRESHOLD, 2 * MALLOC_KEEP_BYTES)


def _attr(a: Attributes | None) -> tuple[int, ...]:
    """The fields of struct fuse_attr (all zero for None: a negative entry)."""
    if a is None:
        return (0,) * 16
    mtime, mtime_ns = divmod(a.mtime_ns, 1_000_000_000)
    return (a.ino, a.size, (a.size + 511) >> 9, mtime, mtime, mtime, mtime_ns, mtime_ns, mtime_ns,
            a.mode, a.nlink, a.uid, a.gid, a.rdev, 4096, 0)


class _DirHandle:
    """Marks a directory's handle in the handle table (RELEASE and RELEASEDIR share a path)."""

    __slots__ = ("handle",)

    def __init__(self, handle: Any) -> None:
        self.handle = handle


class _Passthrough:
    """Marks a file the kernel reads from its backing file (the handle table has no handle of ours for it)."""

    __slots__ = ("ino",)

    def __init__(self, ino: int) -> None:
        self.ino = ino


def _sized(value: bytes, size: int) -> bytes:
    """The xattr reply convention: size 0 asks for the length only; too small a buffer is ERANGE."""
    if size == 0:
        return GETXATTR_OUT.pack(len(value), 0)
    if len(value) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return value


def _report(message: str) -> None:
    report(f"ucernvm fuse: {message}")


class _TimedLines:
    """The daemon's stderr, each line opened with the moment it was written (UTC), as cvmfs's log lines are:
    the log is read long after, by someone who needs to know when a switch or an error happened."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not text:
            return 0
        stamp = f"{utc_time(time.time())} "
        lines = text[:-1].replace("\n", "\n" + stamp) + text[-1]  # a line the text ends is opened by the next write
        self._stream.write(stamp + lines if self._at_line_start else lines)  # one write: threads' lines stay whole
        self._at_line_start = text.endswith("\n")
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno...: the stream's
        return getattr(self._stream, name)


def _open_log(path: str) -> int:
    """The daemon's log, appended to; -1, with a warning, where its place holds no regular file (its reports then
    go to /dev/null): the cache it lies in may be on a disk someone else writes (a boot's scratch disk), where a
    link would take the reports to any file and a FIFO would block the daemon before it serves."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, 0o644)
    except OSError as error:  # a link (ELOOP), a FIFO without a reader (ENXIO), a directory, a read-only disk...
        problem = f"cannot be opened ({error.strerror})"
    else:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        problem = "cannot be used"
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = stat.S_IFREG
    if not stat.S_ISREG(mode):
        from ucernvm.client.cache import file_kind  # only here: the log's place is rarely spoiled

        problem = f"is {file_kind(mode)}"
    _warn(f"the daemon's log {path} {problem}, no log file: left alone, the daemon's reports go to /dev/null")
    return -1


def _warn(message: str) -> None:
    """A warning of the FUSE layer, on this process's stderr and kept for user.logbuffer."""
    logbuffer.remember(message)
    _report(f"warning: {message}")
