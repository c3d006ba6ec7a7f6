"""User-data as the boot reads it (context/userdata.py, context/section.py, boot/contextualize.py): gzip
as ``gzip -d`` and cloud-init unpack it, the ucernvm section wherever users put it, and damaged input
met with a warning and a boot that goes on."""

from __future__ import annotations

import gzip
import io
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest

from ucernvm.boot.contextualize import apply_user_data
from ucernvm.boot.log import BootLog
from ucernvm.boot.state import BootState
from ucernvm.boot.system import System
from ucernvm.config import BootConfig

SECTION = b"[ucernvm-begin]\ncvmfs_tag=cernvm-system-4.7.1\n[ucernvm-end]\n"


def boot_with(tmp_path: Path, user_data: bytes) -> BootState:
    state = BootState(System(str(tmp_path)), BootLog(io.StringIO()))
    apply_user_data(state, user_data, "test")
    return state


def test_gzip_of_several_members_is_unpacked_whole(tmp_path: Path) -> None:
    """``cat a.gz b.gz`` is one gzip file to gzip -d and to cloud-init: all of it is the user-data."""
    data = gzip.compress(b"#cloud-config\n") + gzip.compress(SECTION)
    state = boot_with(tmp_path, data)
    assert state.user_data == b"#cloud-config\n" + SECTION
    assert state.config.tag == "cernvm-system-4.7.1" and state.warnings == []


def test_truncated_gzip_is_reported_not_half_read(tmp_path: Path) -> None:
    """A cut-off upload is not taken for shorter user-data: the settings in what survived are not
    applied, the user-data stays as it came, and the report says why."""
    whole = gzip.compress(SECTION + b"#cloud-config\n" + bytes(range(256)) * 64)
    state = boot_with(tmp_path, whole[: len(whole) - 40])
    assert state.user_data == whole[: len(whole) - 40]
    assert state.config.tag == BootConfig().tag
    assert len(state.warnings) == 1 and "gzip" in state.warnings[0]


def test_the_first_section_in_the_user_data_counts_also_across_mime_parts(tmp_path: Path) -> None:
    """µCernVM reads the first [ucernvm-begin] block of the user-data; a later part's block (here an
    example in a shell script) does not override it."""
    first = MIMEText(SECTION.decode(), "ucernvm", "utf-8")  # utf-8: base64, read only once decoded
    example = MIMEText("#!/bin/sh\ncat > /tmp/example <<EOF\n[ucernvm-begin]\ncvmfs_tag=example\n[ucernvm-end]\nEOF\n",
                       "x-shellscript")
    message = MIMEMultipart()
    message.attach(first)
    message.attach(example)
    state = boot_with(tmp_path, message.as_bytes())
    assert state.config.tag == "cernvm-system-4.7.1" and state.warnings == []


def test_a_byte_order_mark_before_the_section_is_no_obstacle(tmp_path: Path) -> None:
    """Editors on Windows start UTF-8 files with a byte order mark; the section on the first line counts."""
    for data in (b"\xef\xbb\xbf" + SECTION, b"\xef\xbb\xbf" + SECTION.replace(b"\n", b"\r\n")):
        state = boot_with(tmp_path, data)
        assert state.config.tag == "cernvm-system-4.7.1" and state.warnings == []


@pytest.mark.parametrize("charset", ["undefined", "idna", "punycode", "no-such-charset", '"\x00utf-8"'])
def test_a_part_with_an_unusable_charset_is_read_as_utf8(tmp_path: Path, charset: str) -> None:
    """A charset name that names no text codec, or one that refuses the bytes, must not fail the stage
    that reads the user-data (on later boots the storage stage, which a boot cannot do without)."""
    data = (f'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n--XX\n'
            f"Content-Type: text/ucernvm; charset={charset}\n\n").encode() + SECTION + b"caf\xc3\xa9\n--XX--\n"
    state = boot_with(tmp_path, data)
    assert state.config.tag == "cernvm-system-4.7.1" and state.warnings == []


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_user_data_is_reported(tmp_path: Path, encoding: str) -> None:
    """Windows PowerShell's '>' writes UTF-16: neither the loader nor cloud-init reads that, so the report
    says so instead of the context silently doing nothing."""
    data = ("\ufeff" + SECTION.decode()).encode(encoding)
    state = boot_with(tmp_path, data)
    assert state.user_data == data and state.config.tag == BootConfig().tag
    assert len(state.warnings) == 1 and "UTF-16" in state.warnings[0]


def test_comments_in_the_section_are_read_as_the_shell_that_sourced_it_did(tmp_path: Path) -> None:
    """µCernVM sourced the section as ``_UCONTEXT_KEY=value`` lines: a ``#`` starting a word outside
    quotes begins a comment, a ``#`` inside a word or in quotes is part of the value."""
    section = (b"[ucernvm-begin]\n"
               b"# cvmfs_tag=commented-out\n"
               b"cvmfs_tag=cernvm-system-4.7.1 # pinned for the workshop\n"
               b'cvmfs_http_proxy="http://squid:3128;DIRECT"\t# the site squid\n'
               b'cvmfs_pac_urls="http://wpad/wpad.dat # not a comment"\n'
               b"cernvm_path=cvm4#x\n"
               b"resize_rootfs=off # keep 20 GiB\n"
               b"[ucernvm-end]\n")
    state = boot_with(tmp_path, section)
    config = state.config
    assert (config.tag, config.proxy, config.os_path) == ("cernvm-system-4.7.1", "http://squid:3128;DIRECT", "cvm4#x")
    assert config.pac_urls == "http://wpad/wpad.dat # not a comment"
    assert config.resize_rootfs is False and state.warnings == []
