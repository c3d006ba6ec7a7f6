"""A µCernVM scratch disk booted by ucernvm: its aufs writable layer becomes an overlayfs one, once.

µCernVM mounted ``persistent/`` as an aufs branch; ucernvm mounts it as overlayfs's upper layer, to which
aufs's marks mean nothing: the files the OS deleted would come back and the marks show as files. The
first ucernvm boot of such a disk converts them (aufs(5); the kernel's overlayfs.rst):

- ``.wh.<name>``, aufs's whiteout, becomes overlayfs's: the character device 0/0 named ``<name>``. Where
  the layer also has ``<name>`` (aufs makes a new entry over a whiteout, then removes the whiteout: a boot
  cut short between the two leaves both), that entry stays, a directory made opaque, as overlayfs makes
  one over a whiteout: the snapshot's entry was deleted before it;
- ``.wh..wh..opq`` in a directory (the OS replaced it whole) becomes its ``trusted.overlay.opaque=y``;
- aufs's own entries, every other name starting with ``.wh..wh.`` (the whiteout base ``.wh..wh.aufs``,
  the pseudo-link and orphan directories ``.wh..wh.plnk`` and ``.wh..wh.orph`` at the root, a directory
  being removed, ``.wh..wh.<name>.<hex>``), are removed, and so is an opaque mark at the root, which aufs
  never reads; aufs refuses names starting with ``.wh.`` in the union, so none of these is the OS's file;
- a mark that is not a regular file (aufs reads only those) is left, with a line in the log.

Such a disk is told by the whiteout base at the layer's root, which aufs makes on every writable branch:
one lstat at every boot, where looking for any ``.wh.`` entry would walk the whole layer each time, and
would take a file of ucernvm's own layer named ``.wh.*`` (overlayfs gives the prefix no meaning) for a
mark. The base goes last: a conversion that a power cut stops is done again at the next boot, each step
finding its own result done (a whiteout already made, the attribute already set). The layer is the OS's
and may hold anything: it is walked without following a link, and none is written through.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ucernvm.boot.system import write_log
from ucernvm.records import NamedTuple

if TYPE_CHECKING:
    from ucernvm.boot.state import BootState

PREFIX = ".wh."  # aufs's whiteout: .wh.<name>
AUFS_OWN = PREFIX + PREFIX  # doubly whiteouted: aufs's own entries
OPAQUE_MARK = AUFS_OWN + ".opq"
BASE = AUFS_OWN + "aufs"  # the whiteout base, at the root of every writable aufs branch


class AufsPlan(NamedTuple):
    whiteouts: list[str]  # the marks .wh.<name> to convert (paths in the layer)
    opaque: list[str]  # directories whose .wh..wh..opq makes them opaque
    removed: list[str]  # aufs's own entries, the root's base last
    left: list[str]  # marks left alone, with why: "path: reason"


def convert_aufs_layer(state: BootState) -> None:
    """Convert ``persistent/`` if it is an aufs branch (its whiteout base is there); a warning where the
    conversion cannot finish: the boot goes on, and the next one takes it up again."""
    upper = state.scratch / "persistent"
    if state.scratch_fresh or not os.path.lexists(upper / BASE):
        return
    log = f"aux/aufs-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log"
    try:
        plan = plan_conversion(upper)
    except OSError as error:
        state.facts["aufs"] = {"error": str(error)}
        state.warn(f"the writable layer, aufs's from µCernVM, was not converted for overlayfs: {error}; files it "
                   "deleted show, and the next boot tries again")
        return
    result = state.system.do(ConvertAufs(str(upper), plan, str(state.scratch / log))) or {"planned": True}
    state.facts["aufs"] = result
    _report(state, plan, result, log)


def _report(state: BootState, plan: AufsPlan, result: dict[str, int | str], log: str) -> None:
    """One line of the boot report: what was converted, or (a warning) what stopped it or was left."""
    done = _counts(plan)
    see = f"; its log {log} not written: {result['log_error']}" if "log_error" in result else f"; see {log}"
    if "error" in result:
        state.warn(f"the conversion of the writable layer from µCernVM's aufs to overlayfs stopped: "
                   f"{result['error']}; the next boot takes it up again{see}")
    elif plan.left or "log_error" in result:
        state.warn(f"converted the writable layer from µCernVM's aufs to overlayfs ({done}); marks left as "
                   f"they are, not aufs's marks: {len(plan.left)}{see}")
    else:
        state.log.info(f"converted the writable layer from µCernVM's aufs to overlayfs: {done}{see}")


def _counts(plan: AufsPlan) -> str:
    return (f"whiteouts: {len(plan.whiteouts)}, opaque directories: {len(plan.opaque)}, aufs's own entries "
            f"removed: {len(plan.removed)}")


def plan_conversion(upper: Path) -> AufsPlan:
    """What converting the layer ``upper`` would do (nothing is changed); raises OSError where a directory
    cannot be read, so that no base is removed while marks may be left unseen."""
    plan = AufsPlan([], [], [], [])
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(upper / relative) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            if not entry.name.startswith(PREFIX):
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
            elif entry.name == OPAQUE_MARK and relative:
                if _a_mark(entry, path, plan):
                    plan.opaque.append(relative)
            elif entry.name.startswith(AUFS_OWN):
                if path != BASE:
                    plan.removed.append(path)
            elif entry.name[len(PREFIX):] in ("", ".", ".."):
                plan.left.append(f"{path}: names no entry")
            elif _a_mark(entry, path, plan):
                plan.whiteouts.append(path)
    plan.removed.append(BASE)  # last: until it goes, the next boot converts what is left
    return plan


def _a_mark(entry: os.DirEntry[str], path: str, plan: AufsPlan) -> bool:
    """Whether the entry is a mark aufs reads, a regular file; if not, it is left, with why."""
    if entry.is_file(follow_symlinks=False):
        return True
    plan.left.append(f"{path}: not a regular file, which aufs does not take for a mark either")
    return False


class ConvertAufs(NamedTuple):
    """Apply a plan to the layer ``upper``; each step is a line of ``log``."""

    upper: str
    plan: AufsPlan
    log: str

    def describe(self) -> str:
        return f"convert {self.upper} from aufs to overlayfs ({_counts(self.plan)}; log: {self.log})"

    def apply(self) -> dict[str, int | str]:
        """The counts of what was done, or "error": the step that failed; "log_error" where the log could
        not be written (a full or failing disk)."""
        upper, lines = Path(self.upper), [f"conversion of {Path(self.upper).name}/ from aufs to overlayfs"]
        result: dict[str, int | str]
        try:
            for mark in self.plan.whiteouts:
                lines.append(_whiteout(upper, mark))
            for directory in self.plan.opaque:
                lines.append(_opaque(upper, directory))
            for path in self.plan.removed:
                _remove(upper / path)
                lines.append(f"remove {path} (aufs's own)")
            lines += [f"leave {reason}" for reason in self.plan.left]
            result = {"whiteouts": len(self.plan.whiteouts), "opaque": len(self.plan.opaque),
                      "removed": len(self.plan.removed), "left": len(self.plan.left)}
        except OSError as error:
            lines.append(f"stopped: {error}")
            result = {"error": str(error)}
        log_error = write_log(self.log, lines)
        return result if log_error is None else {**result, "log_error": log_error}


def _whiteout(upper: Path, mark: str) -> str:
    """Make the whiteout the mark stands for (unless the layer has that entry), then remove the mark.
    In this order, a step cut short leaves both, which it is done again from."""
    directory, name = os.path.split(mark)
    target = os.path.join(directory, name[len(PREFIX):])
    try:
        st = os.lstat(upper / target)
    except FileNotFoundError:
        os.mknod(upper / target, stat.S_IFCHR, os.makedev(0, 0))
        line = f"whiteout {target} (was {name})"
    else:
        line = _over_a_whiteout(upper, target, name, st.st_mode, st.st_rdev)
    os.unlink(upper / mark)
    return line


def _over_a_whiteout(upper: Path, target: str, name: str, mode: int, rdev: int) -> str:
    """The layer has the entry a mark deletes: a whiteout made before this step was cut short, or what the
    OS made after deleting the snapshot's, which stays (a directory opaque: none of the snapshot's shows)."""
    if stat.S_ISCHR(mode) and rdev == 0:
        return f"whiteout {target} (was {name}, made before)"
    if not stat.S_ISDIR(mode):
        return f"keep {target}: made after {name} deleted the snapshot's"
    _set_opaque(upper / target)
    return f"opaque {target}: made after {name} deleted the snapshot's"


def _opaque(upper: Path, directory: str) -> str:
    _set_opaque(upper / directory)
    os.unlink(upper / directory / OPAQUE_MARK)
    return f"opaque {directory} (was {directory}/{OPAQUE_MARK})"


def _set_opaque(directory: Path) -> None:
    from ucernvm.boot.rebase import OPAQUE_XATTR  # only a converting boot pays for the import before the rebase

    os.setxattr(directory, OPAQUE_XATTR, b"y", follow_symlinks=False)


def _remove(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        import shutil  # only a converting boot uses it

        shutil.rmtree(path)  # by descriptors, never through a link (shutil.rmtree.avoids_symlink_attacks)
    else:
        os.unlink(path)
