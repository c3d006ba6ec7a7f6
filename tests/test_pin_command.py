"""``ucernvm pin`` and the ``#<PIN>`` console login, run as processes against the CernVM Online service."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PROJECT
from ucernvm.boot.system import DryRunSystem, RealSystem
from ucernvm.context.login_hook import BUNDLED_SOURCES, DROP_IN, HOOK, hook_files, install_login_hook
from ucernvm.context.online import OnlineContext
from ucernvm.context.pairing import meta_data
from ucernvm.server.online import Context, OnlineServer, OnlineService

USER_DATA = b"#cloud-config\nhostname: paired\n"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemo root@demo"
SECRET = "s3cret"


@pytest.fixture
def service() -> OnlineService:
    return OnlineService([Context("demo", USER_DATA, root_pubkey=PUBKEY),
                          Context("secret", b"#cloud-config\nencrypted: yes\n", secret=SECRET)])


@pytest.fixture
def server(service: OnlineService):
    with OnlineServer(service) as running:
        yield running


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A booted OS's tree: the scratch disk is at /mnt/.rw, with the first boot's user-data."""
    (tmp_path / "mnt" / ".rw" / "context").mkdir(parents=True)
    (tmp_path / "mnt" / ".rw" / "context" / "user-data").write_bytes(b"#cloud-config\nfirst: boot\n")
    return tmp_path


def pin_cli(server: OnlineServer, root: Path, *args: str, stdin: bytes = b"",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "ucernvm", "pin", "--service", server.url,
               "--context-dir", str(root / "mnt/.rw/context"), "--seed-dir", str(root / "var/lib/cloud/seed/nocloud"),
               *args]
    return subprocess.run(command, input=stdin, capture_output=True, cwd=PROJECT, timeout=60,
                          env={**os.environ, **(env or {})})


def seed(root: Path) -> tuple[bytes, dict]:
    directory = root / "var/lib/cloud/seed/nocloud"
    return (directory / "user-data").read_bytes(), json.loads((directory / "meta-data").read_text())


# --- ucernvm pin --------------------------------------------------------------------------------


def test_pin_writes_the_user_data_and_a_cloud_init_seed(server: OnlineServer, service: OnlineService,
                                                        root: Path) -> None:
    result = pin_cli(server, root, service.new_pin("demo"))
    assert result.returncode == 0, result.stderr.decode()
    context = root / "mnt/.rw/context"
    assert (context / "user-data").read_bytes() == USER_DATA
    assert (context / "user-data.previous").read_bytes() == b"#cloud-config\nfirst: boot\n"
    assert stat.S_IMODE((context / "user-data").stat().st_mode) == 0o600
    user_data, meta = seed(root)
    assert user_data == USER_DATA and meta["public-keys"] == [PUBKEY]
    assert meta["instance-id"].startswith("ucernvm-online-")
    output = result.stdout.decode()
    assert 'context "demo"' in output and "user-data.previous" in output and "Reboot to apply it." in output

    again = pin_cli(server, root, service.new_pin("demo"))
    assert again.returncode == 0
    assert seed(root)[1]["instance-id"] != meta["instance-id"]  # cloud-init must see a new instance
    assert (context / "user-data.previous").read_bytes() == USER_DATA


def test_pin_seeds_cloud_init_without_the_loaders_part(root: Path) -> None:
    section = b"[ucernvm-begin]\ncvmfs_tag=cernvm-system-4.7.1\n[ucernvm-end]\n"
    user_data = (b"Content-Type: multipart/mixed; boundary=XX\nMIME-Version: 1.0\n\n--XX\n"
                 b"Content-Type: text/cloud-config\n\n" + USER_DATA + b"--XX\nContent-Type: text/ucernvm\n\n"
                 + section + b"--XX--\n")
    service = OnlineService([Context("mime", user_data)])
    with OnlineServer(service) as mime_server:
        result = pin_cli(mime_server, root, service.new_pin("mime"))
    assert result.returncode == 0, result.stderr.decode()
    assert (root / "mnt/.rw/context/user-data").read_bytes() == user_data  # the loader's copy: whole
    seeded = seed(root)[0]
    assert USER_DATA in seeded and b"text/cloud-config" in seeded
    assert b"ucernvm" not in seeded


def test_pin_of_an_encrypted_context(server: OnlineServer, service: OnlineService, root: Path) -> None:
    assert pin_cli(server, root, service.new_pin("secret"), "--secret", SECRET).returncode == 0
    assert seed(root)[0] == b"#cloud-config\nencrypted: yes\n"
    # without --secret the secret is asked for (here on standard input, which is not a terminal)
    result = pin_cli(server, root, service.new_pin("secret"), stdin=f"{SECRET}\n".encode())
    assert result.returncode == 0, result.stderr.decode()


def test_pin_errors_are_one_line_and_write_nothing(server: OnlineServer, service: OnlineService,
                                                   root: Path) -> None:
    result = pin_cli(server, root, "000000")
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "ucernvm: error: CernVM Online has no context for PIN 000000 (not-found): it is unknown, has expired, "
        "or was used already",
        "ucernvm: hint: a PIN lasts 5 minutes and pairs one machine: request a new one",
    ]
    assert not (root / "var").exists()
    assert (root / "mnt/.rw/context/user-data").read_bytes() == b"#cloud-config\nfirst: boot\n"

    odd = service.new_pin("secret")
    result = pin_cli(server, root, odd)  # no secret, and nothing on standard input
    assert result.returncode == 1 and b"no secret was given" in result.stderr
    assert service.pin_status(odd) == "unclaimed"
    assert b"not a CernVM Online PIN" in pin_cli(server, root, "12345").stderr


def test_pin_without_a_scratch_disk_writes_only_the_seed(server: OnlineServer, service: OnlineService,
                                                         tmp_path: Path) -> None:
    result = pin_cli(server, tmp_path, service.new_pin("demo"))
    assert result.returncode == 0
    assert b"not booted by ucernvm" in result.stdout
    assert not (tmp_path / "mnt").exists() and seed(tmp_path)[0] == USER_DATA


def _fake_cloud_init(directory: Path, failing_stage: str = "") -> Path:
    directory.mkdir()
    log = directory / "calls"
    script = directory / "cloud-init"
    script.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = "{failing_stage}" ] && exit 3\nexit 0\n')
    script.chmod(0o755)
    return log


def test_pin_apply_runs_cloud_init_again(server: OnlineServer, service: OnlineService, root: Path,
                                         tmp_path: Path) -> None:
    log = _fake_cloud_init(tmp_path / "bin")
    path = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    result = pin_cli(server, root, service.new_pin("demo"), "--apply", env=path)
    assert result.returncode == 0, result.stderr.decode()
    assert log.read_text().splitlines() == ["clean --logs", "init", "modules --mode config", "modules --mode final"]
    assert b"Applied with cloud-init." in result.stdout


def test_pin_apply_reports_a_failing_cloud_init_stage(server: OnlineServer, service: OnlineService, root: Path,
                                                      tmp_path: Path) -> None:
    log = _fake_cloud_init(tmp_path / "bin", failing_stage="init")
    result = pin_cli(server, root, service.new_pin("demo"), "--apply",
                     env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert result.returncode == 1
    assert b"`cloud-init init` failed (exit status 3)" in result.stderr
    assert log.read_text().splitlines() == ["clean --logs", "init"]
    assert seed(root)[0] == USER_DATA  # the files are written: a reboot still applies them


def test_pin_apply_without_cloud_init(server: OnlineServer, service: OnlineService, root: Path,
                                      tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = pin_cli(server, root, service.new_pin("demo"), "--apply", env={"PATH": str(tmp_path / "empty")})
    assert result.returncode == 0
    assert b"cloud-init is not installed here." in result.stdout and b"Reboot to apply it." in result.stdout


# --- the #<PIN> login ---------------------------------------------------------------------------


@pytest.fixture
def os_root(root: Path, server: OnlineServer, tmp_path: Path) -> Path:
    """The OS tree with the hook installed, stand-ins for login(1) and systemctl, python3 on PATH."""
    install_login_hook(root, RealSystem(), hook_files(server.url))
    (root / "bin").mkdir()
    for program in ("login", "systemctl"):
        script = root / "bin" / program
        script.write_text(f'#!/bin/sh\necho "$*" > "$(dirname "$0")/{program}.called"\n')
        script.chmod(0o755)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "python3").symlink_to(sys.executable)
    return root


def login(root: Path, name: str, answers: str = "", path: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """What agetty does with the login name: run the login program as ``-p -- <name>``."""
    tools = root.parent / "tools"
    return subprocess.run([str(root / HOOK), "-p", "--", name], input=answers.encode(), capture_output=True,
                          timeout=60, env={"PATH": path or f"{tools}:/usr/bin:/bin", "TERM": "linux"})


def test_the_hook_is_installed_for_the_console_gettys(root: Path) -> None:
    install_login_hook(root, RealSystem(), hook_files("http://10.0.2.2:8001"))
    hook = root / HOOK
    assert hook.stat().st_mode & 0o111
    assert "SERVICE_URL=http://10.0.2.2:8001\n" in hook.read_text()
    for unit in ("getty@.service", "serial-getty@.service", "console-getty.service"):
        drop_in = (root / "etc/systemd/system" / f"{unit}.d" / DROP_IN).read_text()
        assert "ExecStart=\nExecStart=-/sbin/agetty --login-program /usr/lib/ucernvm/pin-login -o '-p -- \\\\u' " \
            in drop_in
    for name in BUNDLED_SOURCES:  # the very sources of this package, not a second implementation
        assert (root / "usr/lib/ucernvm/python/ucernvm" / name).read_bytes() == (PROJECT / "ucernvm" / name).read_bytes()


def test_a_dry_run_only_records_the_hook(tmp_path: Path) -> None:
    system = DryRunSystem()
    install_login_hook(tmp_path, system, hook_files())
    assert f"write {tmp_path / HOOK}" in "\n".join(system.actions)
    assert list(tmp_path.iterdir()) == []


def test_a_login_name_with_a_pin_pairs_the_machine(os_root: Path, service: OnlineService) -> None:
    pin = service.new_pin("demo")
    result = login(os_root, f"#{pin[:3]} {pin[3:]}", answers="n\n")
    assert result.returncode == 0, result.stderr.decode()
    assert (os_root / "mnt/.rw/context/user-data").read_bytes() == USER_DATA
    assert seed(os_root)[0] == USER_DATA
    assert b"Reboot now to apply it? [y/N]" in result.stdout
    assert not (os_root / "bin/systemctl.called").exists() and not (os_root / "bin/login.called").exists()


def test_the_login_asks_for_the_secret_and_reboots_when_told(os_root: Path, service: OnlineService) -> None:
    result = login(os_root, f"#{service.new_pin('secret')}", answers=f"{SECRET}\ny\n")
    assert result.returncode == 0, result.stderr.decode()
    assert seed(os_root)[0] == b"#cloud-config\nencrypted: yes\n"
    assert (os_root / "bin/systemctl.called").read_text() == "reboot\n"


def test_a_failed_pairing_says_why_and_logs_nobody_in(os_root: Path) -> None:
    result = login(os_root, "#000000", answers="y\n")
    assert result.returncode == 1
    assert b"ucernvm-pin: error: CernVM Online has no context for PIN 000000" in result.stderr
    assert not (os_root / "bin/systemctl.called").exists() and not (os_root / "bin/login.called").exists()


def test_other_names_go_to_login(os_root: Path) -> None:
    assert login(os_root, "root").returncode == 0
    assert (os_root / "bin/login.called").read_text() == "-p -- root\n"


def test_the_login_without_python(os_root: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for tool in ("dirname", "sh"):
        (bare / tool).symlink_to(f"/bin/{tool}")
    result = login(os_root, "#123456", path=str(bare))
    assert result.returncode == 1 and b"needs python3" in result.stderr


def test_the_bundled_client_runs_on_the_standard_library_alone(os_root: Path, server: OnlineServer,
                                                               service: OnlineService) -> None:
    """No site-packages (-S): neither the installed ucernvm nor cryptography, only the bundle; an
    encrypted context too (OpenSSL's libcrypto, which the ssl module links)."""
    bundle = os_root / "usr/lib/ucernvm/python"
    program = ("import sys; sys.path.insert(0, sys.argv[1]); import ucernvm.context.pairing as m; "
               "print(m.__file__); sys.exit(m.main(sys.argv[2:]))")

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-S", "-c", program, str(bundle), "--service", server.url,
                               "--context-dir", str(os_root / "mnt/.rw/context"),
                               "--seed-dir", str(os_root / "seed"), *args], capture_output=True, timeout=60)

    result = run(service.new_pin("demo"))
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines()[0] == str(bundle / "ucernvm/context/pairing.py")
    assert (os_root / "seed/user-data").read_bytes() == USER_DATA
    encrypted = run(service.new_pin("secret"), "--secret", SECRET)
    assert encrypted.returncode == 0, encrypted.stderr.decode()
    assert (os_root / "seed/user-data").read_bytes() == b"#cloud-config\nencrypted: yes\n"


def test_the_instance_id_is_safe_as_a_path() -> None:
    """cloud-init makes the instance-id a directory name: a hostile context id cannot climb out."""
    meta = json.loads(meta_data(OnlineContext(b"", context_uuid="../../etc/passwd"), 1.5))
    assert meta == {"instance-id": "ucernvm-online-etcpasswd-1500"}
