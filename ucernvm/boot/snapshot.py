"""The ``snapshot`` stage: which snapshot of the repository this machine boots, verified and pinned.

As µCernVM: the tag comes from the settings (kernel < context); a snapshot pinned on the scratch disk
(``aux/cvmfs_snapshot``: root hash, then tag) wins on every later boot, and ``aux/cvmfs_force_tag`` moves
the machine to another tag once, rebasing the writable layer onto it (rebase.py). Unlike the original,
a snapshot older than the newest one this disk has booted is refused unless forced (a forced move back
is the newest from then on), and the force file is consumed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ucernvm.boot.rebase import rebase_if_moved
from ucernvm.boot.state import BootState
from ucernvm.boot.system import MakeDirs, RemoveFile, Sync, WriteFile
from ucernvm.boot.untrusted import read_scratch, scratch_directory
from ucernvm.client.cache import MIB, ObjectCache
from ucernvm.client.repository import Repository, check_fqrn
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import ConfigError, FetchError, FormatError, VerificationError

KEYS_DIR = "/etc/cvmfs/keys"
KEYS_COPY = "aux/keys"  # the image's master keys, copied for the OS's tools
PIN_FILE = "aux/cvmfs_snapshot"
FORCE_FILE = "aux/cvmfs_force_tag"
NEWEST_FILE = "aux/ucernvm_newest_boot.json"
MAX_SMALL_FILE = 64 << 10  # the pin, the force file and the newest revision's record are a line or two


def trusted_keys(state: BootState, fqrn: str) -> list:
    """The image's master keys (``/etc/cvmfs/keys/``, master_key_files), and only those, as
    µCernVM's CVMFS_KEYS_DIR: the scratch disk is the OS's to write (its ``aux/keys/`` is a copy for the
    OS's tools, export_master_keys), and a key found there would let its writer sign any snapshot of the
    repository."""
    files = master_key_files(state, fqrn)
    if not files:
        # A dry run's --keys stand for the image's: the hint names what gave the keys looked at.
        given = "build the image with --keys" if state.keys_dir is None else "give --keys a directory"
        base = state.keys_dir or state.system.path(KEYS_DIR)
        raise ConfigError(f"no master public key for {fqrn} in {base}", f"{given} holding {fqrn}.pub")
    return [key for file in files for key in load_master_keys(file)]


def master_key_files(state: BootState, fqrn: str) -> list[Path]:
    """The ``*.pub`` files of ``/etc/cvmfs/keys/<fqrn>/``, of the domain's ``/etc/cvmfs/keys/<domain>/`` (cvmfs's
    own layout, ``cern.ch/`` for ``cernvm-prod.cern.ch``: an image built with a site's ``/etc/cvmfs/keys``), then
    of ``/etc/cvmfs/keys/`` (in a dry run, of its --keys)."""
    check_fqrn(fqrn)
    base = state.keys_dir or state.system.path(KEYS_DIR)
    domain = fqrn.partition(".")[2]
    directories = (base / fqrn, base / domain, base) if domain else (base / fqrn, base)
    return [file for directory in directories for file in sorted(directory.glob("*.pub"))]


def export_master_keys(state: BootState) -> None:
    """Copy the image's master keys to ``aux/keys/<fqrn>/`` on the scratch disk, as µCernVM does at every boot
    (an image's keys change with its version): the OS's own tools verify the repository with them there
    (cernvm-update). The boot never reads them back (trusted_keys); a full disk is a warning."""
    fqrn = state.config.repository
    files = master_key_files(state, fqrn)
    directory = state.scratch / KEYS_COPY / fqrn
    what = f"{KEYS_COPY}/{fqrn}/ (the master keys, for the OS) on the scratch disk"
    if files and scratch_directory(state, f"{KEYS_COPY}/{fqrn}", what):
        state.do_or_warn(what, *(WriteFile(str(directory / file.name), file.read_bytes()) for file in files))


def cache_quota(scratch: Path) -> int:
    """µCernVM's rule, in bytes: 2000 MiB, or half the scratch file system when it is not larger than 4000 MiB.
    µCernVM takes the size from ``df -m`` (MiB, rounded up) and writes CVMFS_QUOTA_LIMIT in MiB."""
    try:
        stats = os.statvfs(scratch)
    except OSError:
        return 2000 * MIB
    size_mib = -(-stats.f_blocks * stats.f_frsize // MIB)
    return (2000 if size_mib > 4000 else size_mib // 2) * MIB


def read_pin(state: BootState) -> tuple[ContentHash | None, str]:
    """The pinned snapshot (``aux/cvmfs_snapshot``: root hash, then tag). A pin file that holds no root hash
    (cut short by a power cut, a disk error) is reported and counts as none: the boot then chooses
    afresh and rebases the writable layer, as after a lost pin.

    The hash is taken as µCernVM's CVMFS_ROOT_HASH is: the OS may pin what it likes, but what the hash names
    is checked against it (the repository's signed manifest is verified all the same), must be a root
    catalog, and is refused when older than the newest revision this disk booted; the tag is only a label."""
    lines = _scratch_lines(state, PIN_FILE, "choosing the snapshot afresh, as on a first boot")
    if lines is None:
        return None, ""
    try:
        root_hash = ContentHash.parse(lines[0])
    except (FormatError, IndexError):
        state.warn(f"{PIN_FILE} on the scratch disk holds no pinned snapshot ({_shown(lines)}): "
                   "choosing the snapshot afresh, as on a first boot")
        return None, ""
    tag = lines[-1] if len(lines) > 1 else ""
    if tag and not _is_tag_name(tag):
        # The label is shown on the console and in the report: no control characters from the OS's file.
        state.warn(f"{PIN_FILE} on the scratch disk holds no tag name after its root hash ({_shown(lines[1:])}): "
                   "ignored, the pinned snapshot boots")
        return root_hash, ""
    return root_hash, tag


def read_forced_tag(state: BootState) -> str | None:
    """The tag of ``aux/cvmfs_force_tag``; a file that holds no tag name is reported and removed, and the
    pinned snapshot boots (the OS writes the file to move the machine: garbage must not stop every boot)."""
    lines = _scratch_lines(state, FORCE_FILE, "the machine stays on its snapshot")
    if lines is None:
        return None
    if len(lines) == 1 and _is_tag_name(lines[0]):
        return lines[0]
    refused = _remove_force_file(state)
    fate = f"not removed ({refused}), reported again next boot" if refused else "removed"
    state.warn(f"{FORCE_FILE} on the scratch disk holds no tag name ({_shown(lines)}): {fate}, the machine "
               "stays on its snapshot")
    return None


def _scratch_lines(state: BootState, name: str, if_unusable: str) -> list[str] | None:
    """The non-blank lines of a small text file on the scratch disk; None without the file, or (with a
    warning) when it is no small regular file or a failing disk cannot read it: nothing more is asked of
    that disk; a file that is not text gives no lines."""
    data = read_scratch(state, name, MAX_SMALL_FILE, if_unusable)
    if data is None:
        return None
    try:
        return [line.strip() for line in data.decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        return []


def _is_tag_name(line: str) -> bool:
    return line.isprintable() and " " not in line


def _shown(lines: list[str]) -> str:
    return repr("\n".join(lines)[:80]) if lines else "empty, or not text"


def load_bulk_hashes(state: BootState) -> None:
    """A first boot downloads the OS's files, which OpenSSL's hashes verify (cvmfs/hashing.py): its 4.7 MB
    libcrypto is loaded while the network comes up, not later in this stage or, in the FUSE daemon that
    inherits what this process loaded, while PID 1 hands over to the OS. A later boot hashes nothing large."""
    if state.scratch_fresh:
        import hashlib  # noqa: F401


def snapshot_stage(state: BootState) -> None:
    config, scratch = state.config, state.scratch
    tag = config.tag or None
    pinned_hash, pinned_tag = read_pin(state)
    newest = _newest_booted(state)
    if newest is not None and newest.get("repository", config.repository) != config.repository:
        # Its root hash would be looked up in this repository, and its catalogs, still cached, booted under this
        # one's name.
        state.warn(f"this disk booted repository {str(newest['repository'])[:80]!r} before, not {config.repository}: "
                   "its pin and newest revision are left aside, and the snapshot is chosen afresh")
        pinned_hash, pinned_tag, newest = None, "", None
    forced = read_forced_tag(state)
    root_hash = None
    if forced:
        tag = forced
        state.log.info(f"aux/cvmfs_force_tag: moving to tag {forced}")
    elif pinned_hash is not None:
        root_hash, tag = pinned_hash, pinned_tag or tag
        state.log.info(f"pinned snapshot {pinned_hash} ({pinned_tag or 'untagged'})")

    cache = ObjectCache(scratch / "cache", cache_quota(scratch))
    keys = trusted_keys(state, config.repository)

    def open_snapshot(tag: str | None, root_hash: ContentHash | None) -> Repository:
        return Repository(state.source, config.repository, keys, tag=None if root_hash else tag, root_hash=root_hash,
                          cache=cache)

    try:
        repository = open_snapshot(tag, root_hash)
    except FetchError as error:
        if not forced or pinned_hash is None:
            raise
        # A tag the repository lacks, or no server to ask: the verified pinned snapshot still boots.
        state.warn(f"{FORCE_FILE} asks for tag {forced}: {error.message}; the machine stays on its pinned snapshot "
                   "(the file is kept for the next boot)")
        forced, root_hash, tag = None, pinned_hash, pinned_tag or config.tag or None
        repository = open_snapshot(tag, root_hash)
    for warning in repository.warnings:
        state.warn(warning)
    if root_hash is not None and tag:
        repository.tag_name = tag  # the pin's; its history database stays closed (a sqlite file to load)
    revision = repository.revision
    if newest and revision < newest["revision"] and not forced:
        raise VerificationError(
            f"snapshot revision {revision} is older than revision {newest['revision']} this machine booted before",
            "to roll back on purpose, write the tag to aux/cvmfs_force_tag on the scratch disk",
        )
    state.repository = repository
    label = tag or _tag_of(repository)
    rebase_if_moved(state, pinned_hash.hex if pinned_hash is not None else None)
    _record_boot(state, label, root_hash is None or bool(forced), bool(forced), newest)
    state.facts["snapshot"] = {
        "repository": repository.fqrn,
        "revision": revision,
        "root_hash": repository.root_hash.hex,
        "tag": label,
        "published": repository.manifest.timestamp,
        "pinned": pinned_hash is not None and not forced,
        "offline": repository.offline,
    }
    state.log.info(f"snapshot: {repository.fqrn} revision {revision} {repository.root_hash} ({label or 'untagged'})")


def _record_boot(state: BootState, label: str, pin: bool, forced: bool, newest: dict | None) -> None:
    """Pin the snapshot booted (when *pin*: a first boot, a lost pin, a move), consume the force file, and
    record the newest revision booted (or the one forced), flushed to the disk at once."""
    repository, scratch, system = state.repository, state.scratch, state.system
    wrote = []
    if pin:
        if not _write_pin(state, label, forced):
            return  # a full or failing disk: nothing more is asked of it this boot
        wrote.append("the pin")
        refused = _remove_force_file(state) if forced else None
        if refused:
            state.warn(f"{FORCE_FILE} not removed from the scratch disk ({refused}): the next boot moves to tag "
                       f"{label} again, the snapshot the pin now names")
    # A move back with the force file is the new baseline: the next boot, pinned to it, must not be refused.
    # A record of an earlier version names no repository yet.
    if forced or not newest or repository.revision > newest["revision"] or "repository" not in newest:
        record = {"repository": repository.fqrn, "revision": repository.revision, "root_hash": repository.root_hash.hex,
                  "tag": label}
        if state.do_or_warn(f"{NEWEST_FILE} (the newest revision booted) on the scratch disk",
                            WriteFile(str(scratch / NEWEST_FILE), json.dumps(record).encode())):
            wrote.append("the newest revision booted")
    if wrote:
        # A machine switched off right after its first boot must boot the same snapshot next time and still
        # refuse older ones; the file system's own commit comes seconds later. (Also flushes the context that
        # a first boot saved in the storage stage.)
        system.do(Sync(" and ".join(wrote) + " on the scratch disk"))


def _write_pin(state: BootState, label: str, forced: bool) -> bool:
    """Write ``aux/cvmfs_snapshot``; where a full or failing disk refuses it, a warning that says which
    snapshot boots without it and what the next boot does. Whether it was written.

    The snapshot chosen still boots, as in µCernVM, which writes the pin once the new snapshot is mounted
    and boots it whether or not the write succeeds: it is verified, and the writable layer was rebased onto
    it already; the old pin's snapshot under that layer would show again files the OS had deleted. The
    old pin stays whole (the write replaces it only when complete) and so does the force file: the next
    boot moves again, finds the layer rebased, and pins the snapshot where there is room."""
    repository, scratch = state.repository, state.scratch
    try:
        state.system.do(MakeDirs(str(scratch / "aux")))
        state.system.do(WriteFile(str(scratch / PIN_FILE), f"{repository.root_hash}\n{label}\n".encode()))
    except OSError as error:
        booted = f"revision {repository.revision} {repository.root_hash} ({label or 'untagged'})"
        after = (f"{FORCE_FILE} is kept, so the next boot moves to it again" if forced
                 else "the next boot chooses its snapshot afresh")
        state.warn(f"{PIN_FILE} not written on the scratch disk ({error.strerror or error}): this boot runs "
                   f"snapshot {booted} without a pin; {after}")
        return False
    return True


def _remove_force_file(state: BootState) -> str | None:
    """Remove ``aux/cvmfs_force_tag``: None, or why a failing disk refused (the boot goes on: each caller
    says what the file left there does)."""
    try:
        state.system.do(RemoveFile(str(state.scratch / FORCE_FILE)))
    except OSError as error:
        return str(error.strerror or error)
    return None


def _tag_of(repository: Repository) -> str:
    """The name of the snapshot booted without a tag: a tag of its root catalog other than trunk."""
    for candidate in repository.tags():
        if candidate.root_hash == repository.root_hash and not candidate.name.startswith("trunk"):
            return candidate.name
    return ""


def _newest_booted(state: BootState) -> dict | None:
    """The record of the newest revision this disk booted. A damaged one is reported and counts as none (this
    boot writes it anew): whoever can damage it can as well remove it, or move the machine with the force file."""
    unguarded = "older snapshots are not refused this boot"
    data = read_scratch(state, NEWEST_FILE, MAX_SMALL_FILE, unguarded)
    if data is None:
        return None
    try:
        record = json.loads(data)
        if isinstance(record.get("revision"), int):
            return record
    except (ValueError, AttributeError):
        pass
    state.warn(f"{NEWEST_FILE} on the scratch disk holds no revision ({data[:80]!r}): {unguarded}")
    return None
