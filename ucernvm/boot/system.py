"""Side effects of the boot, as small actions that describe or apply themselves.

Every stage changes the machine only through ``System.do(action)``. ``RealSystem`` applies the action;
``DryRunSystem`` records it (and answers with what it would have produced), so the same stage code
runs as PID 1 in a VM and as ``ucernvm --dry-run`` on a laptop without touching it.

The records of everything the boot imports (these actions, the stages, the formats and the client's)
are named tuples, or plain classes where they change: dataclasses would bring inspect, ast, dis and
tokenize into PID 1 and compile generated methods for each class, ~1 ms natively and 20-30 ms under
emulation for each of dozens (tests/test_image.py keeps dataclasses off the boot's path).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ucernvm.errors import MountError, UcernvmError
from ucernvm.records import NamedTuple

if TYPE_CHECKING:
    import subprocess

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MNT_DETACH = 2


def _errno_error(error_type: type[UcernvmError], what: str) -> UcernvmError:
    code = ctypes.get_errno()
    return error_type(f"{what}: {os.strerror(code)}")


class Action(Protocol):
    def describe(self) -> str: ...

    def apply(self) -> Any: ...


class Mount(NamedTuple):
    source: str
    target: str
    fstype: str | None
    options: str = ""
    flags: int = 0

    def describe(self) -> str:
        kind = "bind-mount" if self.flags & MS_BIND else ("move mount" if self.flags & MS_MOVE else f"mount {self.fstype}")
        options = f" ({self.options})" if self.options else ""
        return f"{kind} {self.source} on {self.target}{options}"

    def apply(self) -> None:
        fstype = self.fstype.encode() if self.fstype else None
        data = self.options.encode() if self.options else None
        if _libc.mount(self.source.encode(), self.target.encode(), fstype, self.flags, data) != 0:
            raise _errno_error(MountError, self.describe())


class Unmount(NamedTuple):
    target: str
    lazy: bool = False

    def describe(self) -> str:
        return f"unmount {self.target}" + (" (lazy)" if self.lazy else "")

    def apply(self) -> None:
        if _libc.umount2(self.target.encode(), MNT_DETACH if self.lazy else 0) != 0:
            raise _errno_error(MountError, self.describe())


class MakeDirs(NamedTuple):
    path: str
    mode: int = 0o755

    def describe(self) -> str:
        return f"create directory {self.path}"

    def apply(self) -> None:
        os.makedirs(self.path, self.mode, exist_ok=True)


class WriteFile(NamedTuple):
    path: str
    data: bytes
    mode: int = 0o644

    def describe(self) -> str:
        return f"write {self.path} ({len(self.data)} bytes)"

    def apply(self) -> None:
        temporary = f"{self.path}.tmp-{os.getpid()}"
        try:
            # PID 1's name is known in advance: whatever the OS left there (a FIFO that would block, a link to
            # write through) goes, and the file is made anew.
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as handle:
                handle.write(self.data)
            os.chmod(temporary, self.mode)
            os.replace(temporary, self.path)
        except OSError:
            # A full or failing disk: no half-written file is left beside the one that stays as it was.
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise


def write_log(path: str, lines: list[str]) -> str | None:
    """Write a log of ``lines`` whole, as ``WriteFile`` writes (under a temporary name made anew: whatever the
    OS left in its place, a FIFO that would block, a link, is not written through); why it could not be
    (none of it is left, so that no log points nowhere), or None."""
    try:
        WriteFile(path, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")).apply()
    except OSError as error:
        return error.strerror or str(error)
    return None


class CopyMedium(NamedTuple):
    """Copy a medium whole (a block device, or a file standing for one) to the file ``path``, made as
    ``WriteFile`` makes one; a medium of more than ``limit`` bytes is refused (OSError), not cut short."""

    source: str
    path: str
    limit: int
    mode: int = 0o600

    def describe(self) -> str:
        return f"copy {self.source} to {self.path} (at most {self.limit} bytes)"

    def apply(self) -> int:
        fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)  # a block device's size, as a file's
            if size > self.limit:
                raise OSError(errno.EFBIG, f"{self.source} holds {size} bytes, more than {self.limit}")
            chunks: list[bytes] = []
            done = 0
            while done < size:
                chunk = os.pread(fd, min(1 << 20, size - done), done)
                if not chunk:
                    raise OSError(errno.EIO, f"{self.source} ended after {done} of its {size} bytes")
                chunks.append(chunk)
                done += len(chunk)
        finally:
            os.close(fd)
        WriteFile(self.path, b"".join(chunks), self.mode).apply()
        return size


class RemoveFile(NamedTuple):
    path: str

    def describe(self) -> str:
        return f"remove {self.path}"

    def apply(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Sync(NamedTuple):
    """Flush every file system's written data to its disk (sync(2)): what must survive a power cut."""

    what: str

    def describe(self) -> str:
        return f"flush to disk: {self.what}"

    def apply(self) -> None:
        os.sync()


class Run(NamedTuple):
    argv: tuple[str, ...]
    timeout: float = 60.0
    input: bytes | None = None

    def describe(self) -> str:
        return "run " + " ".join(self.argv)

    def apply(self) -> subprocess.CompletedProcess[bytes]:
        # Imported where a tool runs, as in storage.py and rescue.py: a later boot runs none, and
        # subprocess brings locale and selectors, 0.03 s of imports in a TCG boot.
        import subprocess

        try:
            result = subprocess.run(self.argv, input=self.input, capture_output=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise UcernvmError(f"{self.describe()}: {error}") from None
        if result.returncode != 0:
            output = (result.stderr or result.stdout).decode(errors="replace").strip().splitlines()
            raise UcernvmError(f"{self.argv[0]} failed ({result.returncode}): {output[-1] if output else 'no output'}")
        return result


class System:
    """Applies actions; ``dry_run`` says whether they only get recorded."""

    dry_run = False

    def __init__(self, root: str = "/") -> None:
        # Where the boot's own directories live: "/" as PID 1, a scratch directory in a dry run.
        self.root = Path(root)
        self.actions: list[str] = []
        self.timings: list[tuple[str, float]] = []  # (action, seconds) of the actions applied

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def do(self, action: Action) -> Any:
        description = action.describe()
        self.actions.append(description)
        started = time.monotonic()
        try:
            return action.apply()
        finally:
            self.timings.append((description, time.monotonic() - started))

    def slowest(self, count: int = 10) -> list[tuple[str, float]]:
        """The *count* longest actions, longest first: where a stage's time went besides its code."""
        return sorted(self.timings, key=lambda timing: -timing[1])[:count]


class RealSystem(System):
    pass


class DryRunSystem(System):
    """Records every action; the boot's directories live in a temporary directory."""

    dry_run = True

    def __init__(self) -> None:
        import shutil  # a dry run's alone: PID 1 does without them
        import tempfile
        import weakref

        super().__init__(tempfile.mkdtemp(prefix="ucernvm-dry-run-"))
        # The temporary root goes with the system that made it, at the latest when Python exits: whoever
        # runs a dry run (the command, a test, a program) leaves nothing of it in /tmp.
        self.close = weakref.finalize(self, shutil.rmtree, self.root, ignore_errors=True)

    def do(self, action: Action) -> Any:
        self.actions.append(action.describe())
        if isinstance(action, MakeDirs):
            # Directories under the dry run's own root are harmless and let later stages use them.
            if Path(action.path).is_relative_to(self.root):
                action.apply()
        return None
