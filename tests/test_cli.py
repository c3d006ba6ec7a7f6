"""The command line: help for every command, one-line errors without tracebacks for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import PROJECT, run_cli
from ucernvm.cli import command_modules, main, needed_commands


def test_every_command_has_help() -> None:
    for name in command_modules():
        result = run_cli(name, "--help")
        assert result.returncode == 0, name
        assert b"usage: ucernvm " + name.encode() in result.stdout
        assert b"``" not in result.stdout, name  # a docstring's markup, not what a terminal shows
    assert run_cli("repo", "verify", "--help").returncode == 0


def test_no_command_prints_usage_and_fails() -> None:
    result = run_cli()
    assert result.returncode == 2 and b"usage:" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["repo", "ls", "http://127.0.0.1:9/cvmfs/dead.cern.ch", "--key", "{pub}"], b"cannot fetch .cvmfspublished from any server"),
        (["repo", "ls", "/nonexistent/repo", "--key", "{pub}"], b"is not a CernVM-FS repository"),
        (["repo", "ls", "{repo}", "--key", "/nonexistent.pub"], b"does not exist"),
        (["repo", "ls", "{repo}", "--key", "{repo}/.cvmfspublished"], b"is not a PEM public key"),
        (["repo", "cat", "{repo}", "/nope", "--key", "{pub}", "--now", "{now}"], b"no such file or directory"),
        (["repo", "cat", "{repo}", "/needs_migration", "--key", "{pub}", "--now", "{now}"], b"not a regular file"),
        (["repo", "ls", "{repo}", "--key", "{pub}", "--now", "{now}", "--tag", "v9"], b"has no tag 'v9'"),
        (["repo", "ls", "{repo}", "--key", "{pub}", "--now", "{now}", "--root-hash", "xyz"], b"malformed content hash"),
        (["repo", "ls", "ftp://example/x", "--key", "{pub}"], b"not an HTTP URL"),
        (["repo", "ls", "http://127.0.0.1:9/cvmfs/@fqrn@", "--key", "{pub}"], b"cannot tell the repository name"),
        (["serve", "/nonexistent", "--port", "99999"], b"is not a TCP port"),
        (["keygen", "x.cern.ch", "--keys", "{keys}"], b"already exist"),
        (["--dry-run", "--user-data", "/nonexistent/user-data"], b"cannot read user-data /nonexistent/user-data"),
        (["resign", "--repo", "{repo}", "--name", "x.cern.ch", "--keys", "{keys}", "--days", "-1"],
         b"--days must be at least 1"),
        (["mount", "{repo}", "/tmp", "--key", "{pub}", "--threads", "0"], b"--threads must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(legacy_pristine, tmp_path, args: list[str], message: bytes) -> None:
    values = {
        "pub": str(legacy_pristine.pub),
        "repo": str(legacy_pristine.repo),
        "now": str(int(legacy_pristine.now.timestamp())),
        "keys": str(tmp_path / "keys"),
    }
    if args[0] == "keygen":
        run_cli("keygen", "x.cern.ch", "--keys", values["keys"], check=True)
    result = run_cli(*[arg.format(**values) for arg in args])
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stderr.startswith(b"ucernvm: error: ")


def test_a_command_loads_only_its_own_module_and_the_overall_help_lists_all() -> None:
    script = ("import sys; from ucernvm.cli import main; code = main(['options']); "
              "print(sorted(m for m in sys.modules if m.startswith('ucernvm.commands.')), 'numpy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "['ucernvm.commands.options'] False"
    assert needed_commands(["--dry-run", "--cmdline", "quiet"]) == []
    assert needed_commands(["--keys", "k", "mount", "demo", "/mnt"]) == ["mount"]  # the first one named
    for overall in (["--help"], ["--dry-run", "--help"], ["frobnicate"]):
        assert needed_commands(overall) == command_modules()
    assert all(name.encode() in run_cli("--help").stdout for name in command_modules())


def test_resign_needs_only_the_master_key_and_the_certificate(legacy, tmp_path) -> None:
    """As cvmfs_server resign: the repository's own key may live on the publishing machine, apart from the
    master key."""
    keys = tmp_path / "master-only"
    keys.mkdir()
    for suffix in ("masterkey", "crt"):
        shutil.copy(legacy.keys / f"{legacy.fqrn}.{suffix}", keys)
    run_cli("resign", "--repo", legacy.repo, "--name", legacy.fqrn, "--keys", keys, check=True)
    result = run_cli("repo", "verify", legacy.repo, "--key", legacy.pub)
    assert result.returncode == 0, result.stderr


def test_keygen_refuses_a_name_that_is_no_repository_name(tmp_path) -> None:
    """The name names the key files: ../x.cern.ch wrote them beside the keys directory, not in it."""
    refused = run_cli("keygen", "../x.cern.ch", "--keys", tmp_path / "keys")
    assert refused.returncode == 2 and b"'../x.cern.ch' is not a repository name" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_repository_directory_named_otherwise_is_refused_naming_the_repository_it_holds(legacy_pristine,
                                                                                          tmp_path) -> None:
    """`ucernvm publish --repo repo` makes such a directory: the name its manifest holds is the one to pass,
    where the whitelist would be refused for the directory's name."""
    copy = tmp_path / "repo"
    shutil.copytree(legacy_pristine.repo, copy)
    now = str(int(legacy_pristine.now.timestamp()))
    refused = run_cli("repo", "ls", copy, "--key", legacy_pristine.pub, "--now", now)
    assert refused.returncode == 2
    assert refused.stderr.decode().splitlines() == [
        f"ucernvm: error: {copy} holds the repository legacy_aufs.cern.ch; its directory name says repo",
        "ucernvm: hint: pass --name legacy_aufs.cern.ch"]
    named = run_cli("repo", "ls", copy, "--key", legacy_pristine.pub, "--now", now, "--name", "legacy_aufs.cern.ch",
                    check=True)
    assert named.stdout == run_cli("repo", "ls", legacy_pristine.repo, "--key", legacy_pristine.pub, "--now", now,
                                   check=True).stdout


def test_repo_ls_takes_the_path_before_or_after_the_options(legacy_pristine) -> None:
    source, key, now = legacy_pristine.repo, legacy_pristine.pub, int(legacy_pristine.now.timestamp())
    before = run_cli("repo", "ls", source, "/needs_migration", "--key", key, "--now", now, check=True).stdout
    after = run_cli("repo", "ls", source, "--key", key, "--now", now, "/needs_migration", check=True).stdout
    root = run_cli("repo", "ls", source, "--key", key, "--now", now, check=True).stdout
    assert before == after != root


@pytest.mark.parametrize("file_system_type,unmounted", [
    ("fuse.cvmfs", True), ("fuse", True), ("fuseblk", True), ("fuseblk.ntfs", True),
    ("fusectl", False), ("ext4", False),
])  # fmt: skip
def test_umount_takes_the_fuse_mounts_fusermount_takes(monkeypatch, capsys, file_system_type: str,
                                                       unmounted: bool) -> None:
    from ucernvm.commands import umount

    calls: list[str] = []
    monkeypatch.setattr(umount, "mounted_file_system", lambda path: ("0:42", file_system_type))
    monkeypatch.setattr(umount, "unmount", lambda path, lazy: calls.append(path))
    code = main(["umount", "/mnt/x"])
    assert (code, calls) == ((0, ["/mnt/x"]) if unmounted else (1, []))
    assert unmounted or f"holds a {file_system_type} file system" in capsys.readouterr().err


@pytest.mark.parametrize("file_system_type,refused", [
    ("fuse.cvmfs", True), ("fuse", True), ("fuseblk.ntfs", True), ("ext4", False), (None, False),
])  # fmt: skip
def test_mount_refuses_a_mount_point_that_holds_a_fuse_mount(monkeypatch, capsys, tmp_path,
                                                             file_system_type: str | None, refused: bool) -> None:
    """A second mount would hide the first one, and one whose daemon is gone is no directory to look at:
    both want `ucernvm umount` first, and nothing else is tried."""
    from ucernvm.commands import mount

    monkeypatch.setattr(mount, "mounted_file_system",
                        lambda path: None if file_system_type is None else ("0:42", file_system_type))
    code = main(["mount", str(tmp_path / "repo"), str(tmp_path / "mnt"), "--key", str(tmp_path / "k.pub")])
    error = capsys.readouterr().err
    assert code != 0
    assert (f"holds a {file_system_type} mount already" in error) == refused, error
    assert ("is not a directory" in error) == (not refused), error


def test_umount_of_a_busy_mount_says_what_holds_it_and_what_to_do(monkeypatch, capsys) -> None:
    import errno
    import os

    from ucernvm.commands import umount
    from ucernvm.errors import MountError

    def busy(path: str, lazy: bool) -> None:
        raise MountError(f"cannot unmount {path}: {os.strerror(errno.EBUSY)}")

    monkeypatch.setattr(umount, "mounted_file_system", lambda path: ("0:42", "fuse.cvmfs"))
    monkeypatch.setattr(umount, "unmount", busy)
    assert main(["umount", "/mnt/x"]) != 0
    assert "hint: a process has a file or directory open there" in capsys.readouterr().err
