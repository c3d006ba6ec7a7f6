"""The user-data the OS's cloud-init is seeded with (context/userdata.py for_cloud_init): the loader's
own ``text/ucernvm`` MIME parts are left out (cloud-init has no handler for them and warns, or from
23.4 on reports a degraded instance), everything else reaches it as given, and the loader itself still
reads its section from the whole user-data. A bug in handing over one piece of the context never
keeps the OS from booting."""

from __future__ import annotations

import email
import email.policy
import io
import json
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from ucernvm.boot.contextualize import apply_user_data
from ucernvm.boot.log import BootLog
from ucernvm.boot import seed
from ucernvm.boot.seed import NOCLOUD_SEED, hand_over_context, instance_id, seed_cloud_init
from ucernvm.boot.state import BootState
from ucernvm.boot.system import System
from ucernvm.context.login_hook import HOOK as LOGIN_HOOK
from ucernvm.context.userdata import for_cloud_init

CLOUD_CONFIG = "#cloud-config\nruncmd:\n - [touch, /run/ran]\n"
SCRIPT = "#!/bin/sh\necho hello\n"
SECTION = "[ucernvm-begin]\ncvmfs_tag=cernvm-system-4.7.1\n[ucernvm-end]\n"


def multipart(*parts: MIMEText | MIMEMultipart) -> bytes:
    message = MIMEMultipart()
    for part in parts:
        message.attach(part)
    return message.as_bytes()


def part_texts(data: bytes) -> list[tuple[str, str]]:
    """(content type, decoded text) of every leaf part, in order."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    return [(part.get_content_type(), part.get_payload(decode=True).decode())
            for part in message.walk() if not part.is_multipart()]


def test_the_loader_part_is_left_out_and_the_others_kept() -> None:
    data = multipart(MIMEText(CLOUD_CONFIG, "cloud-config"), MIMEText(SECTION, "ucernvm"),
                     MIMEText(SCRIPT, "x-shellscript"))
    assert part_texts(for_cloud_init(data)) == [("text/cloud-config", CLOUD_CONFIG), ("text/x-shellscript", SCRIPT)]


def test_a_base64_loader_part_in_a_nested_multipart_is_left_out() -> None:
    inner = MIMEMultipart("mixed")
    inner.attach(MIMEText(SECTION, "ucernvm", "utf-8"))  # utf-8: base64 transfer encoding
    inner.attach(MIMEText(SCRIPT, "x-shellscript"))
    data = multipart(MIMEText(CLOUD_CONFIG, "cloud-config"), inner)
    assert b"Content-Transfer-Encoding: base64" in data
    assert part_texts(for_cloud_init(data)) == [("text/cloud-config", CLOUD_CONFIG), ("text/x-shellscript", SCRIPT)]


@pytest.mark.parametrize("data", [
    CLOUD_CONFIG.encode(),
    (SECTION + "[amiconfig]\nplugins=cernvm\n").encode(),  # an inline section: the OS's own tools read the rest
    multipart(MIMEText(CLOUD_CONFIG, "cloud-config"), MIMEText(SCRIPT, "x-shellscript")),
    b"\x1f\x8b\x08 not really gzip, text/ucernvm",
    b"",
], ids=["cloud-config", "inline-section", "no-loader-part", "binary", "empty"])
def test_user_data_without_a_loader_part_reaches_cloud_init_byte_for_byte(data: bytes) -> None:
    assert for_cloud_init(data) == data


@pytest.mark.parametrize("data", [
    multipart(MIMEText(SECTION, "ucernvm")),
    b"Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/ucernvm\n\n" + SECTION.encode(),
], ids=["whole", "unterminated"])
def test_user_data_that_is_only_the_loader_part_leaves_cloud_init_none(data: bytes) -> None:
    assert for_cloud_init(data) == b""


def test_the_seed_leaves_out_the_loader_part_but_the_loader_and_the_instance_keep_it(tmp_path: Path) -> None:
    data = multipart(MIMEText(CLOUD_CONFIG, "cloud-config"), MIMEText(SECTION, "ucernvm"))
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    apply_user_data(state, data, "test")
    assert state.config.tag == "cernvm-system-4.7.1"  # the loader read its section

    seed_cloud_init(state)
    seed = state.new_root / NOCLOUD_SEED
    assert part_texts((seed / "user-data").read_bytes()) == [("text/cloud-config", CLOUD_CONFIG)]
    # The instance is named after the user-data as given, as before: an instance seeded by an older
    # loader is not taken for a new one.
    assert json.loads((seed / "meta-data").read_text())["instance-id"] == instance_id(state)
    assert state.user_data == data


def test_a_bug_in_one_piece_of_the_context_leaves_the_rest_and_the_boot(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The OS boots without the piece that failed, with a warning; the pieces after it are still given."""
    def broken(data: bytes) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(seed, "for_cloud_init", broken)
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    apply_user_data(state, multipart(MIMEText(CLOUD_CONFIG, "cloud-config")), "test")
    (state.new_root / "etc" / "systemd").mkdir(parents=True)  # an OS with systemd's gettys
    hand_over_context(state)
    assert state.warnings == ["seed_cloud_init failed, the OS boots without it: RuntimeError: a bug"]
    assert (state.new_root / LOGIN_HOOK).exists()  # the last piece was still installed



@pytest.mark.parametrize("broken_part", [
    b"Content-Type: multipart/mixed\n\ncaf\xc3\xa9\n",  # no boundary, and UTF-8 in what is taken for a preamble
    b"Content-Type: text/x-shellscript\x1dContent-Transfer-Encoding: 7bit\n\n" + SCRIPT.encode(),
], ids=["multipart-without-boundary", "control-character-in-a-header"])
def test_user_data_that_cannot_be_written_back_reaches_cloud_init_as_given(broken_part: bytes) -> None:
    """Where the message, the loader's part left out, cannot be written out again, cloud-init gets the
    user-data as it came rather than none at all."""
    data = (b'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n--XX\nContent-Type: text/cloud-config\n\n'
            + CLOUD_CONFIG.encode() + b"--XX\nContent-Type: text/ucernvm\n\n" + SECTION.encode() + b"--XX\n"
            + broken_part + b"--XX--\n")
    assert for_cloud_init(data) == data
