"""The Debian appliance's contracts without a VM: the user-data, the scripts, the console parsing."""

from __future__ import annotations

import json
import subprocess

from debian_guest import (CHECKS, HOOK_DONE, MARK_ORDER, USER, WRITTEN_FILE, WRITTEN_TEXT, guest_context,
                          read_report)
from debian_os import FILES, HOOK_PATH, MARK_SCRIPT


def _sh_syntax_ok(script: str) -> None:
    result = subprocess.run(["sh", "-n"], input=script.encode(), capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()


def test_user_data_is_cloud_config_with_user_file_and_hook() -> None:
    context = guest_context(instance_id="i-1", hostname="h-1")
    header, _, body = context.user_data.decode().partition("\n")
    assert header == "#cloud-config"
    config = json.loads(body)
    (user,) = config["users"]
    assert user["name"] == USER and user["ssh_authorized_keys"] == [context.public_key]
    assert context.public_key.startswith("ssh-ed25519 ")
    files = {f["path"]: f for f in config["write_files"]}
    assert files[WRITTEN_FILE]["content"] == WRITTEN_TEXT + "\n"
    assert files[HOOK_PATH]["permissions"] == "0755"
    hook = files[HOOK_PATH]["content"]
    _sh_syntax_ok(hook)
    assert context.public_key in hook and "poweroff" in hook
    assert all(f"check {name} " in hook for name in CHECKS)
    assert context.meta_data == b"instance-id: i-1\nlocal-hostname: h-1\n"
    assert b"OPENSSH PRIVATE KEY" in context.private_key


def test_mark_script_is_valid_shell() -> None:
    _sh_syntax_ok(FILES[MARK_SCRIPT.lstrip("/")][0])


def test_read_report_from_console() -> None:
    console = "\n".join([
        "[   14.0] some kernel line",
        "UCERNVM-MARK systemd-start 12.17",
        "noise UCERNVM-MARK multi-user 30.50",
        "UCERNVM-MARK multi-user 99.00",  # a repeat does not overwrite the first
        *(f"UCERNVM-CHECK {name} ok" for name in CHECKS if name != "sshd"),
        "UCERNVM-CHECK sshd fail",
        'UCERNVM-CLOUD-INIT { "v1": {  "datasource": "DataSourceNoCloud [seed=/dev/vdb]",  "errors": [] }}',
        "UCERNVM-HOST-KEY SHA256:yBkRxp4OGWro51+OuYm6Lb+DzBlK7x/mbANYJny79PU\r",
        HOOK_DONE,
    ])
    report = read_report(console)
    assert report.marks == {"systemd-start": 12.17, "multi-user": 30.5}
    assert report.failed_checks == ["sshd"]
    assert report.datasource.startswith("DataSourceNoCloud") and report.cloud_init_errors == []
    assert report.hook_done and report.host_key == "SHA256:yBkRxp4OGWro51+OuYm6Lb+DzBlK7x/mbANYJny79PU"
    assert report.problems() == ["check sshd failed", f"markers missing or out of order: {report.marks}"]


def test_a_good_boot_has_no_problems() -> None:
    console = "".join(f"UCERNVM-MARK {name} {10.0 + n}\n" for n, name in enumerate(MARK_ORDER))
    console += "".join(f"UCERNVM-CHECK {name} ok\n" for name in CHECKS)
    console += 'UCERNVM-CLOUD-INIT {"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vdb]", "errors": []}}\n'
    assert read_report(console + HOOK_DONE).problems() == []
    assert "the test hook did not finish" in read_report(console).problems()


def test_incomplete_console_reports_what_is_missing() -> None:
    report = read_report("UCERNVM-CHECK user ok\n")
    assert report.failed_checks == [name for name in CHECKS if name != "user"]
    assert report.cloud_init_errors == ["no result from cloud-init"]
    assert not report.hook_done and report.marks == {}
    assert "cloud-init datasource '', not NoCloud" in report.problems()
