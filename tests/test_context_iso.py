"""Context ISOs: ``ucernvm context`` writes them, the boot's own media reader finds the user-data in
them (mounted for real), and the .context conversion of public contexts."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ucernvm.boot.blockdev import probe_path
from ucernvm.config import build_config, context_values
from ucernvm.context.contextfile import convert_context_file
from ucernvm.context.found import MetaData
from ucernvm.context.iso import check_network_config, context_files, write_iso
from ucernvm.context.isodates import Stamps, stamp_dates
from ucernvm.context.section import parse_section
from ucernvm.context.sources import MetadataAddresses, SourceProbe, find_user_data
from ucernvm.errors import ConfigError, ContextError

from helpers import run_cli
from media_images import Media, _kernel_has
from metadata_fakes import closed_port

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOnlyForTests test@host"
ATLAS = b"""#!/bin/sh.after
echo hello
exit 0
[amiconfig]
plugins=cernvm
[cernvm]
organisations=ATLAS
repositories=atlas,atlas-condb,grid,sft
users=atlas:atlas:atlas
[ucernvm-begin]
cvmfs_branch=cernvm-sl7.cern.ch
cvmfs_server=hepvm.cern.ch
cvmfs_path=cvm4
[ucernvm-end]
"""


@pytest.fixture
def media(tmp_path: Path) -> Iterator[Media]:
    attached = Media(tmp_path / "media")
    yield attached
    attached.close()


def read_back(media: Media, image: Path):
    """What the boot finds on ``image`` attached as the only medium."""
    device = media.attach(image)
    warnings: list[str] = []
    found = find_user_data(SourceProbe(devices=[device], mounter=media, warn=warnings.append,
                                       addresses=MetadataAddresses(closed_port(), closed_port())))
    assert not warnings
    return device, found


def test_layouts() -> None:
    meta = MetaData("iid", "host", (KEY,))
    label, files = context_files(b"u", "cernvm-launch", meta)
    assert label == "CONFIG-2"
    assert sorted(files) == ["ec2/latest/meta-data.json", "ec2/latest/user-data", "openstack/latest/meta_data.json",
                             "openstack/latest/user_data", "readme"]
    assert files["ec2/latest/user-data"] == files["openstack/latest/user_data"] == b"u"
    assert json.loads(files["openstack/latest/meta_data.json"]) == {"uuid": "iid", "hostname": "host",
                                                                     "public_keys": {"key-0": KEY}}
    assert context_files(b"u", "config-drive", meta)[0] == "config-2"
    label, files = context_files(b"u", "nocloud", MetaData())
    assert label == "cidata" and sorted(files) == ["meta-data", "user-data"]
    assert files["meta-data"].startswith(b'instance-id: "') and len(files["meta-data"]) > 20  # a made UUID
    with pytest.raises(ContextError, match="unknown context layout"):
        context_files(b"u", "floppy", meta)


def test_the_instance_id_is_made_from_the_context() -> None:
    def made_id(user_data: bytes, meta: MetaData = MetaData()) -> str:
        return json.loads(context_files(user_data, "config-drive", meta)[1]["openstack/latest/meta_data.json"])["uuid"]

    first = made_id(b"u")
    assert str(uuid.UUID(first)) == first  # OpenStack's meta-data has a UUID here
    assert made_id(b"u") == first  # booted again with the same context, cloud-init sees the same instance
    assert made_id(b"u2") != first and made_id(b"u", MetaData(hostname="vm")) != first
    assert made_id(b"u", MetaData(public_keys=(KEY,))) != first
    assert made_id(b"u", MetaData("iid")) == "iid"
    nocloud = context_files(b"u", "nocloud", MetaData())[1]["meta-data"]
    assert nocloud == f'instance-id: "{first}"\n'.encode()  # the same id in every layout


@pytest.mark.parametrize("layout,source,label", [("cernvm-launch", "ConfigDrive", "CONFIG-2"),
                                                 ("config-drive", "ConfigDrive", "config-2"),
                                                 ("nocloud", "NoCloud", "cidata")])
def test_command_output_is_found_by_the_boot(layout: str, source: str, label: str, tmp_path: Path,
                                             media: Media) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_bytes(b"#cloud-config\n[ucernvm-begin]\ncvmfs_tag=t1\n[ucernvm-end]\n\xc3\xa9\n")
    (tmp_path / "key.pub").write_text(KEY + "\n")
    image = tmp_path / "ctx.iso"
    result = run_cli("context", user_data, "-o", image, "--format", layout, "--instance-id", "iid-42",
                     "--hostname", "vm-42", "--ssh-key", tmp_path / "key.pub", check=True)
    assert f"label {label}" in result.stdout.decode()
    probed = probe_path(image)
    assert probed is not None and (probed.type, probed.label) == ("iso9660", label)
    device, found = read_back(media, image)
    assert found.source == source and found.device == device.path
    assert found.user_data == user_data.read_bytes()
    assert found.meta == MetaData("iid-42", "vm-42", (KEY,))


NETWORK_CONFIG = b"""version: 2
ethernets:
  eth0:
    match: {macaddress: "52:54:00:12:34:56"}
    addresses: [192.168.10.5/24]
    routes: [{to: default, via: 192.168.10.1}]
"""


def test_a_network_configuration_goes_onto_a_nocloud_seed_and_makes_a_new_instance() -> None:
    label, files = context_files(b"u", "nocloud", MetaData(), NETWORK_CONFIG)
    assert label == "cidata" and sorted(files) == ["meta-data", "network-config", "user-data"]
    assert files["network-config"] == NETWORK_CONFIG  # verbatim, as cloud-init reads it
    without = context_files(b"u", "nocloud", MetaData())[1]
    assert "network-config" not in without and without["meta-data"] != files["meta-data"]
    other = context_files(b"u", "nocloud", MetaData(), NETWORK_CONFIG.replace(b".5/", b".6/"))[1]
    assert other["meta-data"] != files["meta-data"]  # cloud-init applies a network configuration to a new instance
    with pytest.raises(ConfigError, match="only onto a nocloud context, not a config-drive one"):
        context_files(b"u", "config-drive", MetaData(), NETWORK_CONFIG)


def test_the_command_writes_a_network_configuration_the_os_s_cloud_init_finds(tmp_path: Path, media: Media) -> None:
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    (tmp_path / "network.yaml").write_bytes(NETWORK_CONFIG)
    image = tmp_path / "ctx.iso"
    run_cli("context", tmp_path / "user-data", "-o", image, "--format", "nocloud",
            "--network-config", tmp_path / "network.yaml", check=True)
    device, found = read_back(media, image)
    assert found.source == "NoCloud"
    root = media.mount(device)
    try:
        assert (root / "network-config").read_bytes() == NETWORK_CONFIG
    finally:
        media.unmount(root)


@pytest.mark.parametrize("network, options, message", [
    (b"version: 2\nethernets: [unclosed\n", [], "the network configuration is not YAML (line 3)"),
    (b"ethernets: {}\n", [], "has no 'version: 1' or 'version: 2'"),
    (b"version: 3\n", [], "has no 'version: 1' or 'version: 2'"),
    (b"\xff\xfe", [], "is not YAML"),
    (NETWORK_CONFIG, ["--format", "config-drive"], "only onto a nocloud context"),
    (NETWORK_CONFIG, [], "only onto a nocloud context, not a cernvm-launch one"),
], ids=["yaml error", "no version", "version 3", "not utf-8", "config-drive", "the default layout"])
def test_a_network_configuration_cloud_init_would_not_take_is_refused(tmp_path: Path, network: bytes,
                                                                      options: list[str], message: str) -> None:
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    (tmp_path / "network.yaml").write_bytes(network)
    result = run_cli("context", tmp_path / "user-data", "-o", tmp_path / "ctx.iso", *options,
                     "--network-config", tmp_path / "network.yaml")
    assert result.returncode != 0 and message in result.stderr.decode(), result.stderr
    assert b"Traceback" not in result.stderr and not (tmp_path / "ctx.iso").exists()


@pytest.mark.parametrize("network", [b"network:\n  version: 1\n  config: []\n", b"network: {config: disabled}\n"],
                         ids=["under network", "disabled"])
def test_every_form_of_network_configuration_cloud_init_reads_is_taken(network: bytes) -> None:
    check_network_config(network)


def test_gzip_user_data_is_written_verbatim_and_read_gunzipped(tmp_path: Path, media: Media) -> None:
    plain = b"[ucernvm-begin]\nresize_rootfs=off\n[ucernvm-end]\n"
    (tmp_path / "user-data.gz").write_bytes(gzip.compress(plain))
    run_cli("context", tmp_path / "user-data.gz", "-o", tmp_path / "ctx.iso", check=True)
    assert read_back(media, tmp_path / "ctx.iso")[1].user_data == plain


def test_every_reader_sees_the_real_names(tmp_path: Path) -> None:
    pycdlib = pytest.importorskip("pycdlib")
    files = {"a-b": b"1", "a_b": b"2", "dir.with.dots/E6DA6616-8EC4-48E0-BE93-58CE6ACE3CFB.tag": b"3",
             "user-data.txt": b"4"}
    write_iso(tmp_path / "names.iso", "NAMES", files)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "names.iso"))
    try:
        for name, data in files.items():
            for how in ("rr_path", "joliet_path"):
                out = _extract(iso, **{how: f"/{name}"})
                assert out == data, (how, name)
        iso_names = [child.file_identifier().decode() for child in iso.list_children(iso_path="/")]
        assert all(len(name) <= 32 and name.upper() == name for name in iso_names)
    finally:
        iso.close()


def _extract(iso, **path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue()


def iso_dates(iso) -> set[bytes]:
    """Every date pycdlib reads in an open image: its volume descriptors' (the unset expiration aside), and
    every directory record's and Rock Ridge TF entry's in the Rock Ridge and the Joliet tree."""
    dates: set[bytes] = set()
    for descriptor in (iso.pvd, iso.joliet_vd):
        dates |= {descriptor.volume_creation_date.record(), descriptor.volume_modification_date.record(),
                  descriptor.volume_effective_date.record(), descriptor.root_dir_record.date.record()}
        assert descriptor.volume_expiration_date.record() == b"0" * 16 + b"\0"
    for how, encoding in (("rr_path", "utf-8"), ("joliet_path", "utf-16-be")):
        directories = ["/"]
        while directories:
            directory = directories.pop()
            for record in iso.list_children(**{how: directory}):
                dates.add(record.date.record())
                if record.rock_ridge:
                    entries = record.rock_ridge.dr_entries.tf_record or record.rock_ridge.ce_entries.tf_record
                    dates |= {date.record() for date in (entries.access_time, entries.modification_time,
                                                         entries.attribute_change_time)}
                if record.is_dir() and not (record.is_dot() or record.is_dotdot()):
                    name = record.rock_ridge.name() if how == "rr_path" else record.file_identifier()
                    directories.append(f"{directory.rstrip('/')}/{name.decode(encoding)}")
    return dates


def test_the_same_context_makes_the_same_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dates are the Unix epoch in UTC, not the time of writing in the local time zone."""
    pycdlib = pytest.importorskip("pycdlib")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    images = []
    for zone in ("UTC", "America/St_Johns"):  # a second apart, and in a zone 3.5 hours from UTC
        if images:
            time.sleep(1.1)
        monkeypatch.setenv("TZ", zone)
        images.append(tmp_path / f"{zone.replace('/', '-')}.iso")
        run_cli("context", tmp_path / "user-data", "-o", images[-1], check=True)
    assert images[0].read_bytes() == images[1].read_bytes()
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n\n")
    run_cli("context", tmp_path / "user-data", "-o", tmp_path / "other.iso", check=True)
    assert (tmp_path / "other.iso").read_bytes() != images[0].read_bytes()
    iso = pycdlib.PyCdlib()
    iso.open(str(images[0]))
    try:
        assert iso_dates(iso) == {b"1970010100000000\0", bytes([70, 1, 1, 0, 0, 0, 0])}
        assert _extract(iso, rr_path="/openstack/latest/user_data") == b"#cloud-config\n"
        assert _extract(iso, joliet_path="/ec2/latest/user-data") == b"#cloud-config\n"
    finally:
        iso.close()


def test_source_date_epoch_dates_the_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, media: Media) -> None:
    pycdlib = pytest.importorskip("pycdlib")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 22:13:20 UTC
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    run_cli("context", tmp_path / "user-data", "-o", tmp_path / "ctx.iso", "--format", "nocloud", check=True)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "ctx.iso"))
    try:
        assert iso_dates(iso) == {b"2023111422132000\0", bytes([123, 11, 14, 22, 13, 20, 0])}
    finally:
        iso.close()
    monkeypatch.setenv("TZ", "UTC")  # fuseiso takes a date for local time, whatever its time zone byte says
    mounted = media.mount(media.attach(tmp_path / "ctx.iso"))
    try:
        assert {path.stat().st_mtime for path in [mounted, *mounted.iterdir()]} == {1700000000}
        assert (mounted / "user-data").read_bytes() == b"#cloud-config\n"
    finally:
        media.unmount(mounted)
    assert b"SOURCE_DATE_EPOCH" in run_cli("context", "--help", check=True).stdout


@pytest.mark.parametrize("value", ["soon", "-1", "1.5", "6000000000", "1" * 13])
def test_a_source_date_epoch_no_image_holds_is_refused(value: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    result = run_cli("context", tmp_path / "user-data", "-o", tmp_path / "ctx.iso")
    assert result.returncode == 2 and b"SOURCE_DATE_EPOCH" in result.stderr and b"Traceback" not in result.stderr
    assert not (tmp_path / "ctx.iso").exists()


def test_dates_in_continuation_areas_are_fixed_too() -> None:
    """A Rock Ridge name too long for its record moves the TF entry to a continuation area."""
    pycdlib = pytest.importorskip("pycdlib")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09")
    iso.add_fp(io.BytesIO(b"x"), 1, "/LONG.;1", rr_name="l" * 240)
    written = io.BytesIO()
    iso.write_fp(written)
    iso.close()
    image = bytearray(written.getvalue())
    stamp_dates(image, Stamps(datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc)))
    iso.open_fp(io.BytesIO(bytes(image)))
    try:
        record = iso.get_record(rr_path="/" + "l" * 240)
        assert record.rock_ridge.dr_entries.tf_record is None
        assert record.rock_ridge.ce_entries.tf_record.modification_time.record() == bytes([101, 2, 3, 4, 5, 6, 0])
    finally:
        iso.close()


def test_mount_o_loop(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None or not _kernel_has("iso9660"):
        pytest.skip("mount -o loop of an ISO needs root and a kernel with iso9660")
    (tmp_path / "user-data").write_bytes(b"plain user-data\n")
    run_cli("context", tmp_path / "user-data", "-o", tmp_path / "ctx.iso", check=True)
    target = tmp_path / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", str(tmp_path / "ctx.iso"), str(target)], check=True, capture_output=True)
    try:
        assert (target / "openstack/latest/user_data").read_bytes() == b"plain user-data\n"
        assert (target / "ec2/latest/user-data").read_bytes() == b"plain user-data\n"
        assert "uuid" in json.loads((target / "ec2/latest/meta-data.json").read_text())
    finally:
        subprocess.run(["umount", str(target)], check=True)


# ---------------------------------------------------------------------------------------- .context files


def test_public_context_is_converted(tmp_path: Path, media: Media) -> None:
    (tmp_path / "atlas.context").write_bytes(ATLAS.replace(b"\n", b"\r\n"))
    result = run_cli("context", tmp_path / "atlas.context", "-o", tmp_path / "ctx.iso", check=True)
    assert result.stderr == b""
    _, found = read_back(media, tmp_path / "ctx.iso")
    assert found.user_data == ATLAS


def test_context_checks() -> None:
    converted, warnings = convert_context_file(b"\xef\xbb\xbf[amiconfig]\nplugins=cernvm\n")
    assert converted == b"[amiconfig]\nplugins=cernvm\n" and warnings == []
    _, warnings = convert_context_file(b"#!/bin/sh\nls /cvmfs\n[cernvm]\nusers=a:b:c\n")
    assert any("no 'exit' line" in warning for warning in warnings)
    _, warnings = convert_context_file(b"just text\n")
    assert any("no [section]" in warning for warning in warnings)
    with pytest.raises(ContextError, match="UTF-8"):
        convert_context_file(b"[cernvm]\nusers=\xff\xfe\n")
    with pytest.raises(ContextError, match="NUL"):
        convert_context_file(b"[cernvm]\x00\n")


def test_the_public_contexts_cvmfs_path_is_kept_as_the_boot_reads_it() -> None:
    converted, warnings = convert_context_file(ATLAS)
    assert converted == ATLAS and warnings == []
    section, _ = parse_section(converted.decode())
    config, _ = build_config(context_values(section)[0])
    assert config.os_path == "cvm4"


@pytest.mark.parametrize("name,data,options,message", [
    ("bad.context", b"\xff\xfe\x00", [], "UTF-8"),
    ("big", b"x" * ((4 << 20) + 1), [], "at most"),
    ("ok", b"x", ["--hostname", "two\nlines"], "printable line"),
    ("ok", b"x", ["--format", "floppy"], "invalid choice"),
])
def test_command_errors_are_one_line(name: str, data: bytes, options: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(data)
    result = run_cli("context", tmp_path / name, "-o", tmp_path / "ctx.iso", *options)
    assert result.returncode != 0 and message in result.stderr.decode()
    assert b"Traceback" not in result.stderr and not (tmp_path / "ctx.iso").exists()


@pytest.mark.parametrize("name,data,message", [
    ("bad.context", b"\xff\xfe\x00", "UTF-8"),
    ("big", b"x" * ((4 << 20) + 1), "at most"),
])
def test_launch_checks_user_data_as_the_context_command_does(name: str, data: bytes, message: str,
                                                             tmp_path: Path) -> None:
    """``ucernvm launch --context USER_DATA`` makes the ISO itself: bad user-data stops it before QEMU."""
    (tmp_path / name).write_bytes(data)
    result = run_cli("launch", "--image", tmp_path / "no-image", "--context", tmp_path / name, "-q")
    assert result.returncode != 0 and message in result.stderr.decode()
    assert b"Traceback" not in result.stderr and b"QEMU" not in result.stderr


def test_missing_user_data_file(tmp_path: Path) -> None:
    result = run_cli("context", tmp_path / "nothing", "-o", tmp_path / "ctx.iso")
    assert result.returncode == 2 and b"cannot read user-data" in result.stderr and b"Traceback" not in result.stderr


def test_a_context_iso_given_as_user_data_is_refused(tmp_path: Path) -> None:
    """An ISO is not user-data: wrapping it in another ISO would hand the guest the image's bytes."""
    (tmp_path / "user-data").write_bytes(b"#cloud-config\n")
    run_cli("context", tmp_path / "user-data", "-o", tmp_path / "ctx.iso", check=True)
    result = run_cli("context", tmp_path / "ctx.iso", "-o", tmp_path / "again.iso")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert b"is already an ISO 9660 image" in result.stderr and b"launch --context" in result.stderr
    assert not (tmp_path / "again.iso").exists()
