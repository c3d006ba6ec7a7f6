"""Rebase: the writable layer of a machine that moves to another snapshot (µCernVM's 15rebase).

``persistent/`` holds what the OS changed on top of the snapshot it booted. After a move to another
snapshot (``aux/cvmfs_force_tag``) those changes would hide the new snapshot's versions of the same
files, so before the root is assembled each entry of the layer that the new snapshot also has is
settled, with µCernVM's rules:

- a whiteout (a file the OS deleted) of a path the new snapshot has is removed: the new file shows;
- a file or symlink under /etc, /var or /root is the machine's configuration and state: it stays,
  except the package databases (/var/lib/rpm, /var/lib/dpkg), which must describe the new snapshot;
- any other file or symlink the snapshot also has goes, so that the new version shows, and so does a
  directory where the snapshot now has something else (a symlink: /bin in a merged /usr), or the
  reverse. Where µCernVM deletes it, it is moved to ``aux/rebase-<time>/`` on the scratch disk: a rebase
  never destroys a user's bytes.

Entries only the layer has (a user's files) are never touched, nor anything below an opaque directory
(the OS replaced the whole directory: none of the snapshot's entries show there). The accounts
(passwd, group, shadow, gshadow) the layer keeps under /etc get the snapshot's new users and groups,
so that the new OS's services find theirs; an entry whose name the machine already uses is merged
(a group's new members), one whose ID it uses gets a free one, as useradd picks it, in the range of
its ID (system or user), as µCernVM's merge_accounts does. The snapshot's files keep their IDs, so
``aux/uid_map`` and ``aux/gid_map`` (cvmfs's CVMFS_UID_MAP and CVMFS_GID_MAP) map each ID of the
snapshot's accounts that the machine knows under another ID to that one, and the boot's mount
(rootfs.py) applies them at every boot. An entry no free ID can be found for (an ID outside both
ranges, or a range full) is left out: a warning of the boot names them. Every decision is a line of
``aux/rebase-<time>.log``.
"""

from __future__ import annotations

import itertools
import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ucernvm.boot.system import RemoveFile, WriteFile, write_log
from ucernvm.boot.untrusted import UnusableFile, read_file
from ucernvm.client.repository import normalize_path
from ucernvm.cvmfs.catalog import DirectoryEntry
from ucernvm.errors import UcernvmError
from ucernvm.records import NamedTuple

if TYPE_CHECKING:
    from ucernvm.boot.state import BootState

PRESERVED = ("etc", "var", "root")  # µCernVM's: the machine's configuration and state
FOLLOW_SNAPSHOT = ("var/lib/rpm", "var/lib/dpkg")  # package databases describe the files of the snapshot
OPAQUE_XATTR = "trusted.overlay.opaque"
# (accounts, the file of their secret lines, whether a line lists members, the owner map on the scratch disk)
# for groups and users; groups first, whose new IDs the users' primary groups take.
UID_MAP, GID_MAP = "aux/uid_map", "aux/gid_map"
ACCOUNT_FILES = (("etc/group", "etc/gshadow", True, GID_MAP), ("etc/passwd", "etc/shadow", False, UID_MAP))
ID_FIELD = 2  # uid in passwd, gid in group
GROUP_FIELD = 3  # a user's primary group in passwd
# The ranges of login.defs (shadow-utils' defaults, the same for uids and gids): useradd -r gives the highest
# free system ID, useradd the next user ID above the highest one taken.
SYSTEM_IDS = range(101, 1000)
USER_IDS = range(1000, 60001)
ACCOUNTS_LIMIT = 64 << 20  # a passwd of a million users

Lookup = Callable[[str], "DirectoryEntry | None"]  # a path below the OS directory -> its snapshot entry


def rebase_if_moved(state: BootState, previous_root_hash: str | None) -> None:
    """Rebase ``persistent/`` when this boot's snapshot is not the one the layer was made on (a move with
    aux/cvmfs_force_tag, or a lost pin). Runs before the new pin is written: a boot cut short in the
    middle rebases again (each step is a single rename or unlink, and done steps are not found again)."""
    repository, os_path = state.repository, state.config.os_path
    upper = state.scratch / "persistent"
    if previous_root_hash == repository.root_hash.hex or not upper.is_dir() or not any(upper.iterdir()):
        return

    def lookup(relative: str) -> DirectoryEntry | None:
        return repository.lookup(normalize_path(f"{os_path}/{relative}"))

    def read_snapshot(relative: str) -> bytes | None:
        entry = lookup(relative)
        return repository.read(normalize_path(f"{os_path}/{relative}")) if entry is not None and entry.is_regular else None

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aux = state.scratch / "aux"
    try:
        plan = plan_rebase(upper, lookup)
    except (OSError, UcernvmError) as error:
        _report(state, {"error": str(error)}, None, stamp)  # nothing changed, nothing logged
        return
    result = state.system.do(Rebase(str(upper), plan, str(aux / f"rebase-{stamp}"),
                                    str(aux / f"rebase-{stamp}.log"), read_snapshot, str(state.scratch)))
    _report(state, result or {"planned": True}, plan, stamp)


def _report(state: BootState, result: dict, plan: RebasePlan | None, stamp: str) -> None:
    """Say what the rebase did, and separately whether its log could not be written. A rebase that cannot
    finish is a warning: the new snapshot boots all the same, under a layer that may still hide some of its
    files, rather than failing at every boot."""
    state.facts["rebase"] = result
    log = f"aux/rebase-{stamp}.log"
    if "error" in result:
        see = f"; see {log}" if plan is not None and "log_error" not in result else ""
        state.warn(f"rebase of the writable layer stopped: {result['error']}{see}")
    elif plan is not None:
        left_out = result.get("accounts_left_out")
        if left_out:
            see = "" if "log_error" in result else f"; see {log}"
            state.warn(f"the new snapshot's accounts whose IDs this machine's own accounts have, and for which no free "
                       f"ID was found, were left out of its /etc: {', '.join(left_out)}; the snapshot's files they own "
                       f"show as owned by those{see}")
        moved = result.get("accounts_moved")
        if moved:
            state.log.info(f"the new snapshot's accounts whose IDs this machine's own accounts have were given free "
                           f"IDs, which their files show through {UID_MAP} and {GID_MAP}: {', '.join(moved)}")
        state.log.info(f"rebased the writable layer onto the new snapshot: {len(plan.restore)} whiteouts removed, "
                       f"{len(plan.set_aside)} files moved to aux/rebase-{stamp}/, {len(plan.preserved)} kept")
    if "log_error" in result:
        state.warn(f"{log} (what the rebase of the writable layer did) not written on the scratch disk: "
                   f"{result['log_error']}")


class RebasePlan(NamedTuple):
    restore: list[str]  # whiteouts to remove (relative paths in the layer)
    set_aside: list[str]  # files and symlinks to move out of the layer
    preserved: list[str]  # kept on purpose
    kept: list[str]  # left alone, with why: "path: reason"


def plan_rebase(upper: Path, lookup: Lookup) -> RebasePlan:
    """What rebasing ``upper`` onto the snapshot that ``lookup`` describes would do (nothing is changed)."""
    plan = RebasePlan([], [], [], [])
    _plan_directory(upper, "", lookup, plan)
    return plan


def _plan_directory(upper: Path, relative: str, lookup: Lookup, plan: RebasePlan) -> None:
    try:
        names = sorted(os.listdir(upper / relative if relative else upper))
    except OSError as error:
        plan.kept.append(f"{relative or '/'}: cannot be listed ({error.strerror})")
        return
    for name in names:
        path = f"{relative}/{name}" if relative else name
        st = os.lstat(upper / path)
        entry = lookup(path)
        if entry is None:
            continue  # only the layer has it: the machine's own
        directory = stat.S_ISDIR(st.st_mode)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            plan.restore.append(path)
        elif directory and _opaque(upper / path):
            plan.kept.append(f"{path}: opaque directory (the OS replaced it whole)")
        elif directory and entry.is_directory:
            _plan_directory(upper, path, lookup, plan)
        elif _preserved(path):
            plan.preserved.append(path)
        elif directory or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            # A file over a file, or one kind over another (a directory where the snapshot now has a
            # symlink, as /bin in a merged /usr): the layer's entry would hide the snapshot's whole.
            plan.set_aside.append(path)
        else:
            plan.kept.append(f"{path}: a special file")


def _preserved(path: str) -> bool:
    def under(prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + "/")

    return any(under(prefix) for prefix in PRESERVED) and not any(under(prefix) for prefix in FOLLOW_SNAPSHOT)


def _opaque(directory: Path) -> bool:
    try:
        return os.getxattr(directory, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


class Merged(NamedTuple):
    """The accounts of a machine with those of a new snapshot (merge_accounts)."""

    text: bytes
    added: list[str]  # names
    moved: list[tuple[str, str, int, str]]  # added with a free ID: (name, the snapshot's ID, the free one, whose it is)
    left_out: list[tuple[str, str, str]]  # (name, ID, the name that has the ID here)
    id_map: dict[int, int]  # the snapshot's ID -> the machine's, for each account known here under another ID


def merge_accounts(ours: bytes, theirs: bytes, members: bool, group_map: dict[int, int] | None = None) -> Merged:
    """``ours`` (passwd or group lines) with the entries of ``theirs`` whose name is new, and, for groups
    (``members``) present in both, the members ``theirs`` adds. A new entry whose ID ``ours`` has gets a free
    one (free_id), or is left out where none is; a user's primary group is the one ``group_map`` (the groups'
    id_map) gives."""
    lines = ours.decode("utf-8", "surrogateescape").splitlines()
    names = {line.split(":", 1)[0]: index for index, line in enumerate(lines) if ":" in line}
    ids = {fields[ID_FIELD]: fields[0] for fields in (line.split(":") for line in lines) if len(fields) > ID_FIELD}
    entries = [line.split(":") for line in theirs.decode("utf-8", "surrogateescape").splitlines()
               if not line.startswith("#")]
    entries = [fields for fields in entries if len(fields) > ID_FIELD and fields[0]]
    taken = {int(number) for number in [*ids, *(fields[ID_FIELD] for fields in entries)] if number.isdigit()}
    added: list[str] = []
    moved: list[tuple[str, str, int, str]] = []
    left_out: list[tuple[str, str, str]] = []
    id_map: dict[int, int] = {}
    for fields in entries:
        name, number = fields[0], fields[ID_FIELD]
        if name in names:
            ours_number = (lines[names[name]].split(":")[ID_FIELD:] or [""])[0]
            if members and len(fields) == 4:
                lines[names[name]] = _with_members(lines[names[name]], fields[3])
            if ours_number != number and ours_number.isdigit() and number.isdigit():
                id_map.setdefault(int(number), int(ours_number))
            continue
        if number in ids:
            free = free_id(int(number), taken) if number.isdigit() else None
            if free is None:
                left_out.append((name, number, ids[number]))
                continue
            taken.add(free)
            id_map.setdefault(int(number), free)
            moved.append((name, number, free, ids[number]))
            fields[ID_FIELD] = str(free)
        if group_map and len(fields) > GROUP_FIELD and fields[GROUP_FIELD].isdigit():
            fields[GROUP_FIELD] = str(group_map.get(int(fields[GROUP_FIELD]), fields[GROUP_FIELD]))
        lines.append(":".join(fields))
        names[name] = len(lines) - 1
        ids[fields[ID_FIELD]] = name
        added.append(name)
    return Merged(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"), added, moved, left_out, id_map)


def free_id(number: int, taken: set[int]) -> int | None:
    """An ID none of ``taken`` is, for an account whose ID ``number`` is taken, as useradd picks one in the range
    ``number`` is in: the highest free system ID, or the user ID above the highest taken (else the lowest free).
    None outside both ranges (root's 0, nobody's 65534) or where the range is full."""
    if 0 < number < USER_IDS.start:
        candidates: Iterable[int] = reversed(SYSTEM_IDS)
    elif number in USER_IDS:
        above = max((other for other in taken if other in USER_IDS), default=USER_IDS.start - 1) + 1
        candidates = itertools.chain(range(above, USER_IDS.stop), USER_IDS)
    else:
        return None
    return next((candidate for candidate in candidates if candidate not in taken), None)


def _with_members(line: str, members: str) -> str:
    fields = line.split(":")
    if len(fields) != 4:
        return line
    current = [member for member in fields[3].split(",") if member]
    new = [member for member in members.split(",") if member and member not in current]
    fields[3] = ",".join(current + new)
    return ":".join(fields)


def secret_lines(ours: bytes, theirs: bytes, names: list[str]) -> bytes:
    """``ours`` (shadow or gshadow) with the lines ``theirs`` has for the ``names`` just added."""
    present = {line.split(b":", 1)[0] for line in ours.splitlines()}
    wanted = {os.fsencode(name) for name in names} - present
    extra = [line for line in theirs.splitlines() if line.split(b":", 1)[0] in wanted]
    if not extra:
        return ours
    return ours + (b"" if not ours or ours.endswith(b"\n") else b"\n") + b"\n".join(extra) + b"\n"


class Rebase(NamedTuple):
    """Apply a plan to the layer ``upper``; set-aside files go below ``aside``, the decisions to ``log``, the owner
    maps to aux/ on the ``scratch`` disk.

    ``read_snapshot`` gives the new snapshot's bytes of an account file (None when it has none)."""

    upper: str
    plan: RebasePlan
    aside: str
    log: str
    read_snapshot: Callable[[str], bytes | None]
    scratch: str

    def describe(self) -> str:
        return (f"rebase {self.upper} onto the new snapshot: {len(self.plan.restore)} whiteouts removed, "
                f"{len(self.plan.set_aside)} files moved to {self.aside}, {len(self.plan.preserved)} kept under "
                f"/etc, /var, /root; accounts merged, owner maps in {UID_MAP} and {GID_MAP} (log: {self.log})")

    def apply(self) -> dict[str, int | str | list[str]]:
        """The counts of what was done, or "error": the first step that failed (the log says how far it
        got); and "log_error" where the log could not be written (a full or failing disk)."""
        upper, lines = Path(self.upper), [f"rebase of {Path(self.upper).name}/ onto a new snapshot"]
        result: dict[str, int | str | list[str]]
        try:
            result = self._steps(upper, lines)
        except (OSError, UcernvmError) as error:
            lines.append(f"stopped: {error}")
            result = {"error": str(error)}
        log_error = write_log(self.log, lines)
        return result if log_error is None else {**result, "log_error": log_error}

    def _steps(self, upper: Path, lines: list[str]) -> dict[str, int | str | list[str]]:
        for path in self.plan.restore:
            os.unlink(upper / path)
            lines.append(f"restore {path}")
        if self.plan.set_aside:
            # Made anew (its name has this boot's time): one the OS left, a link, would take the layer's files anywhere.
            os.mkdir(self.aside)
        for path in self.plan.set_aside:
            target = Path(self.aside) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(upper / path, target)
            lines.append(f"rebase {path} (moved to {Path(self.aside).name}/{path})")
        lines += [f"preserve {path}" for path in self.plan.preserved]
        lines += [f"keep {reason}" for reason in self.plan.kept]
        accounts: dict[str, list[str]] = {"accounts_moved": [], "accounts_left_out": []}
        added = self._merge_accounts(upper, lines, accounts)
        counts = {"restored": len(self.plan.restore), "set_aside": len(self.plan.set_aside),
                  "preserved": len(self.plan.preserved), "accounts_added": added}
        return {**counts, **{key: names for key, names in accounts.items() if names}}

    def _merge_accounts(self, upper: Path, lines: list[str], accounts: dict[str, list[str]]) -> int:
        """Merge the account files, groups first (a new user's primary group may have a new ID). The owner maps
        are written before the files that name the new IDs replace the old: a boot cut short in between merges
        again. ``accounts`` gets the accounts given free IDs ("user x (uid 5 is y's; now 998)") and those
        left out ("user x (uid 0 is y's)")."""
        merges: list[tuple[str, str, bool, Merged]] = []
        group_map: dict[int, int] | None = None
        for accounts_file, secrets, members, map_path in ACCOUNT_FILES:
            theirs = self.read_snapshot(accounts_file)
            ours = _layer_file(upper, accounts_file, lines) if theirs is not None else None
            if ours is None:
                continue  # the layer does not hide the snapshot's file (or is left alone): nor is its map touched
            merged = merge_accounts(ours, theirs, members, None if members else group_map)
            group_map = merged.id_map if members else group_map
            _write_map(Path(self.scratch) / map_path, merged.id_map)
            lines.append(f"owner map {map_path}: " + (", ".join(f"{theirs_id} -> {ours_id}" for theirs_id, ours_id
                                                                in sorted(merged.id_map.items())) or "none"))
            merges.append((accounts_file, secrets, members, merged))
        for accounts_file, secrets, members, merged in merges:
            _replace(upper / accounts_file, merged.text)
            kind, id_name = ("group", "gid") if members else ("user", "uid")
            lines += [f"account {accounts_file}: added {name}" for name in merged.added]
            lines += [f"account {accounts_file}: {name} has ID {free}: {number} is taken on this machine (by {owner})"
                      for name, number, free, owner in merged.moved]
            lines += [f"account {accounts_file}: left out {name}: ID {number} is taken on this machine (by {owner}), "
                      "and no free one is in its range" for name, number, owner in merged.left_out]
            accounts["accounts_moved"] += [f"{kind} {name} ({id_name} {number} is {owner}'s; now {free})"
                                           for name, number, free, owner in merged.moved]
            accounts["accounts_left_out"] += [f"{kind} {name} ({id_name} {number} is {owner}'s)"
                                              for name, number, owner in merged.left_out]
            their_secrets = self.read_snapshot(secrets) if merged.added else None
            our_secrets = None if their_secrets is None else _layer_file(upper, secrets, lines)
            if their_secrets is not None and our_secrets is not None:
                _replace(upper / secrets, secret_lines(our_secrets, their_secrets, merged.added))
        return sum(len(merged.added) for *_, merged in merges)


def _write_map(path: Path, id_map: dict[int, int]) -> None:
    """An owner map in cvmfs's format (client_config.parse_id_map), made anew as the log is; none where no ID
    is mapped, so that the mount pays nothing for one."""
    if id_map:
        WriteFile(str(path), "".join(f"{theirs} {ours}\n" for theirs, ours in sorted(id_map.items())).encode()).apply()
    else:
        RemoveFile(str(path)).apply()


def _layer_file(upper: Path, relative: str, lines: list[str]) -> bytes | None:
    """An account file of the layer; None without one, or (with a line in the log) where the OS left what the
    rebase must not read (untrusted.py): a symbolic link names a file of the OS's root, not of the loader's,
    where the rebase runs; a FIFO would block it, a huge file fill its memory."""
    try:
        return read_file(upper, relative, ACCOUNTS_LIMIT)
    except UnusableFile as problem:
        lines.append(f"account {relative}: left alone, {problem}")
        return None


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` over ``path`` at once, keeping its mode and owner (shadow files are secret)."""
    st = path.stat()
    temporary = path.with_name(f".{path.name}.rebase-{os.getpid()}")
    temporary.unlink(missing_ok=True)  # PID 1's name is known in advance: what the OS left there (a FIFO) goes
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as handle:
        handle.write(data)
        os.fchown(handle.fileno(), st.st_uid, st.st_gid)
        os.fchmod(handle.fileno(), stat.S_IMODE(st.st_mode))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
