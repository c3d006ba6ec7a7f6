"""The settings table: kernel command line and [ucernvm-begin] parsing, precedence, bad values."""

from __future__ import annotations

import pytest

from ucernvm.config import (DEFAULT_PAC_URLS, SETTINGS, SHARED_PAC_URLS, BootConfig, build_config, context_values,
                            kernel_values, pac_url_list, server_urls, validate)
from ucernvm.context.section import parse_section
from ucernvm.context.userdata import decode, text_parts
from ucernvm.errors import ConfigError


def test_defaults_are_the_production_ones() -> None:
    config = BootConfig()
    assert config.repository == "cernvm-prod.cern.ch"
    assert config.proxy == "auto;DIRECT" and config.panic == "shell"
    assert server_urls(config)[0] == "http://cvmfs-stratum-one.cern.ch/cvmfs/cernvm-prod.cern.ch"


def test_kernel_command_line_with_quotes_and_flags() -> None:
    values = kernel_values(
        'quiet console=ttyS0 cvmfs_repos=os.cern.ch cvmfs_proxy="http://squid:3128;DIRECT" cvmdebug '
        "cernvm_path=cvm4 ucernvm.panic=poweroff root=first"
    )
    config, warnings = build_config(values)
    assert warnings == []
    assert (config.repository, config.proxy, config.os_path, config.panic) == (
        "os.cern.ch", "http://squid:3128;DIRECT", "cvm4", "poweroff"
    )
    assert config.debug is True


def test_precedence_defaults_kernel_context() -> None:
    kernel = kernel_values("cvmfs_repository_tag=HEAD4 cvmfs_server=k1 cvmfs_cdn=cdn.example")
    context, warnings = context_values({"cvmfs_tag": "cernvm-system-4.5", "CVMFS_HTTP_PROXY": "http://p:3128"})
    config, _ = build_config(kernel, context)
    assert config.tag == "cernvm-system-4.5"  # context over kernel
    assert config.servers == "k1"
    assert config.cdn == "NONE"  # a contextualized proxy turns the kernel's CDN off, as µCernVM does
    assert server_urls(config) == ["http://k1/cvmfs/cernvm-prod.cern.ch"]


def test_the_public_contexts_cvmfs_path_selects_the_os_tree_unless_cernvm_path_is_given() -> None:
    section, _ = parse_section("[ucernvm-begin]\ncvmfs_branch=cernvm-sl7.cern.ch\ncvmfs_path=cvm4\n[ucernvm-end]\n")
    values, warnings = context_values(section)
    assert build_config(values)[0].os_path == "cvm4" and not warnings
    for both in ({"cernvm_path": "cvm3", "cvmfs_path": "cvm4"}, {"cvmfs_path": "cvm4", "cernvm_path": "cvm3"}):
        assert build_config(context_values(both)[0])[0].os_path == "cvm3"


def test_cdn_replaces_servers_and_both_separators_work() -> None:
    config, _ = build_config({"cdn": "a.openhtc.io,b.openhtc.io;c.openhtc.io"})
    assert server_urls(config) == [f"http://{h}.openhtc.io/cvmfs/cernvm-prod.cern.ch" for h in "abc"]
    config, _ = build_config({"server_url": "http://x/cvmfs/r;http://y/cvmfs/r", "cdn": "ignored"})
    assert server_urls(config) == ["http://x/cvmfs/r", "http://y/cvmfs/r"]


def test_bad_values_keep_the_previous_value_with_a_warning() -> None:
    config, warnings = build_config({"panic": "explode", "resize_rootfs": "perhaps", "network_timeout": "-3"})
    assert (config.panic, config.resize_rootfs, config.network_timeout) == ("shell", True, 20.0)
    assert len(warnings) == 3 and "ucernvm.panic" in warnings[0]
    _, warnings = context_values({"no_such_key": "1"})
    assert warnings == ["unknown [ucernvm] key 'no_such_key' ignored"]
    config, warnings = build_config({"network_timeout": "abc", "cluster_tries": "many"})
    assert (config.network_timeout, config.cluster_tries) == (20.0, 50)
    assert warnings == ["ucernvm.net_timeout: 'abc' is not a duration in seconds; keeping 20.0",
                        "ucernvm.cluster_tries: 'many' is not a count; keeping 50"]


def test_validation_errors() -> None:
    with pytest.raises(ConfigError, match="no repository"):
        validate(build_config({"repository": ""})[0])
    with pytest.raises(ConfigError, match="must not contain"):
        validate(build_config({"os_path": "cvm4/../../etc"})[0])


def test_every_setting_has_a_spelling_and_help() -> None:
    for setting in SETTINGS:
        assert setting.help and (setting.kernel or setting.context), setting.name
        setting.parse(str(setting.default).lower() if isinstance(setting.default, bool) else str(setting.default))


SECTION = """#cloud-config
users: [default]
[ucernvm-begin]\r
  resize_rootfs=off\r
CVMFS_HTTP_PROXY="http://ca-proxy.cern.ch:3128;DIRECT"
cvmfs_tag='cernvm-system-4.5.0.0'
# a comment
not a setting
cernvm_inject=$(reboot); rm -rf /
[ucernvm-end]
[ucernvm-begin]
cvmfs_tag=second-block-is-ignored
[ucernvm-end]
"""


def test_section_parsing_is_compatible_and_safe() -> None:
    section, warnings = parse_section(SECTION)
    assert section == {
        "resize_rootfs": "off",
        "cvmfs_http_proxy": "http://ca-proxy.cern.ch:3128;DIRECT",
        "cvmfs_tag": "cernvm-system-4.5.0.0",
        "cernvm_inject": "$(reboot); rm -rf /",  # kept verbatim, never given to a shell
    }
    assert len(warnings) == 1 and "not key=value" in warnings[0]


@pytest.mark.parametrize(
    "text",
    ["[ucernvm-begin]\ncvmfs_tag=x\n", "no section at all", "", "\x00\x01\x02[ucernvm-end]", "[ucernvm-begin]" * 10000],
)
def test_malformed_sections_yield_nothing(text: str) -> None:
    section, _ = parse_section(text)
    assert section == {}


def test_section_with_nul_and_oversized_values() -> None:
    section, warnings = parse_section("[ucernvm-begin]\na=1\x002\nb=" + "x" * 70000 + "\nc=ok\n[ucernvm-end]")
    assert section == {"c": "ok"} and len(warnings) == 2


def test_section_inside_base64_mime_part_and_gzip() -> None:
    import base64
    import gzip

    part = base64.b64encode(b"[ucernvm-begin]\ncvmfs_server=hepvm.cern.ch\n[ucernvm-end]\n").decode()
    message = (
        'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n--XX\n'
        "Content-Type: text/cloud-config\n\n#cloud-config\n--XX\n"
        f"Content-Type: text/ucernvm; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{part}\n--XX--\n"
    ).encode()
    for data in (message, gzip.compress(message)):
        texts = text_parts(decode(data))
        found = [parse_section(text)[0] for text in texts if parse_section(text)[0]]
        assert found[0] == {"cvmfs_server": "hepvm.cern.ch"}


def test_section_inside_a_single_base64_part_that_names_multipart() -> None:
    """A single-part MIME message is searched too, when a multipart type is named up front."""
    import base64

    part = base64.b64encode(b"[ucernvm-begin]\ncvmfs_server=hepvm.cern.ch\n[ucernvm-end]\n").decode()
    message = ("MIME-Version: 1.0\nX-Origin: one part of a multipart/mixed upload\nContent-Type: text/plain\n"
               f"Content-Transfer-Encoding: base64\n\n{part}\n").encode()
    found = [parse_section(text)[0] for text in text_parts(message) if parse_section(text)[0]]
    assert found == [{"cvmfs_server": "hepvm.cern.ch"}]


def test_gzip_bomb_is_left_alone() -> None:
    import gzip

    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024))
    assert decode(bomb) == bomb


def test_docs_options_table_is_generated_from_the_settings() -> None:
    from pathlib import Path

    from ucernvm.config import options_table

    docs = (Path(__file__).resolve().parents[1] / "docs" / "options.md").read_text()
    assert options_table() in docs, "docs/options.md is stale: regenerate it from ucernvm.config.options_table()"


def test_the_default_pac_files_end_with_the_shared_wpad_services_in_random_order() -> None:
    orders = {pac_url_list(DEFAULT_PAC_URLS) for _ in range(200)}
    assert {order[:2] for order in orders} == {("http://grid-wpad/wpad.dat", "http://wpad/wpad.dat")}
    assert {order[2:] for order in orders} == {SHARED_PAC_URLS, SHARED_PAC_URLS[::-1]}  # both, 2**-199 to miss one


def test_pac_files_that_are_set_are_asked_in_their_order() -> None:
    assert pac_url_list("http://b/wpad.dat;;http://a/wpad.dat;") == ("http://b/wpad.dat", "http://a/wpad.dat")
    given = ";".join((*SHARED_PAC_URLS, "http://wpad/wpad.dat"))
    assert all(pac_url_list(given) == (*SHARED_PAC_URLS, "http://wpad/wpad.dat") for _ in range(50))
