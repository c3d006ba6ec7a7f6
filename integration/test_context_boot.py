"""Boots whose context or network path comes from outside the image: a real squid proxy (given, or
named by a PAC file), an EC2 metadata service that requires IMDSv2, and a CernVM Online PIN — each a
real server on the host, reached by the isolated guest through a forwarded port — and an OpenNebula
context CD whose static address replaces DHCP."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from boot_env import FQRN, GUEST_HOST, NO_NTP, BootRepository, boot, build_boot_image, make_repository, new_disk
from metadata_fakes import Cloud, metadata_server
from squid import Squid, squid  # noqa: F401 (the session fixture)
from ucernvm.context.iso import write_iso
from ucernvm.image.builder import BuildResult


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootRepository]:
    repository = make_repository(tmp_path_factory.mktemp("context-repo"))
    repository.publish("old")
    repository.publish("new")
    yield repository
    repository.server.stop()


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, repository: BootRepository) -> BuildResult:
    return build_boot_image(tmp_path_factory.mktemp("context-image") / "image", repository.keys)


@pytest.mark.vm
def test_boot_through_a_real_squid(image: BuildResult, repository: BootRepository, tmp_path: Path, qemu: str,
                                   squid: Squid) -> None:
    proxy = squid
    port = int(proxy.url.rsplit(":", 1)[1])
    # The guest asks the proxy for the server by its loopback address, which only the host's squid
    # can reach: every byte of the boot goes through the proxy.
    cmdline = (f"quiet cvmfs_repos={FQRN} cvmfs_url=http://127.0.0.1:{repository.server.port}/cvmfs/{FQRN} "
               f"cvmfs_proxy=http://{GUEST_HOST}:{port} ucernvm.panic=poweroff ucernvm.context=none {NO_NTP}")
    result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "squid.log", ports=(port,))
    assert result.code == 0, result.tail
    report = result.report
    assert report["transfer"]["proxy"] == f"http://{GUEST_HOST}:{port}"
    assert result.marker("UCERNVM-OS-INIT") is not None
    assert f"127.0.0.1:{repository.server.port}/cvmfs/{FQRN}/.cvmfspublished" in proxy.access_log()


@pytest.mark.vm
def test_boot_through_the_proxy_a_pac_file_names(image: BuildResult, repository: BootRepository, tmp_path: Path,
                                                 qemu: str, squid: Squid) -> None:
    """``cvmfs_proxy=auto``: the image evaluates the PAC file (pacparser) and boots through its proxy."""
    port = int(squid.url.rsplit(":", 1)[1])
    pac = repository.stratum / "pac" / "proxy.pac"  # served by the stratum server as /cvmfs/pac/proxy.pac
    pac.parent.mkdir(exist_ok=True)
    pac.write_text('function FindProxyForURL(url, host) {\n'
                   f'  if (shExpMatch(url, "*/cvmfs/{FQRN}/*")) return "PROXY {GUEST_HOST}:{port}";\n'
                   '  return "DIRECT";\n}\n')
    cmdline = (f"quiet cvmfs_repos={FQRN} cvmfs_url=http://127.0.0.1:{repository.server.port}/cvmfs/{FQRN} "
               f"cvmfs_proxy=auto cvmfs_pac_urls=http://{GUEST_HOST}:{repository.server.port}/cvmfs/pac/proxy.pac "
               f"ucernvm.panic=poweroff ucernvm.context=none {NO_NTP}")
    result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "pac.log",
                  ports=(port, repository.server.port))
    assert result.code == 0, result.tail
    report = result.report
    assert report["servers"]["proxy_groups"] == [[f"http://{GUEST_HOST}:{port}"]]
    assert report["transfer"]["proxy"] == f"http://{GUEST_HOST}:{port}"
    assert result.marker("UCERNVM-OS-INIT") is not None
    # As in the squid boot, the server's loopback address is reachable only through the proxy.
    assert f"127.0.0.1:{repository.server.port}/cvmfs/{FQRN}/.cvmfspublished" in squid.access_log()


@pytest.mark.vm
def test_boot_with_an_ec2_metadata_service_requiring_imdsv2(image: BuildResult, repository: BootRepository,
                                                           tmp_path: Path, qemu: str) -> None:
    user_data = b"#cloud-config\nruncmd: []\n[ucernvm-begin]\ncvmfs_tag=old\n[ucernvm-end]\n"
    cloud = Cloud("ec2", user_data=user_data, imdsv2_required=True)
    with metadata_server(cloud) as address:
        port = int(address.rsplit(":", 1)[1])
        cmdline = repository.cmdline(f"ucernvm.metadata={GUEST_HOST}:{port}")
        result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "ec2.log",
                      ports=(*repository.ports, port))
    assert result.code == 0, result.tail
    report = result.report
    assert report["context"]["source"] == "EC2"
    assert report["snapshot"]["tag"] == "old"  # the [ucernvm-begin] tag from the metadata service
    assert "/latest/api/token" in cloud.paths()  # the IMDSv2 token came first
    assert result.marker("UCERNVM-OS-SEED") == "#cloud-config"


# An encrypted context's PIN ends in an odd digit and its first 4 digits add up to the salt of the
# context's UUID (here 1+1+1+1); the image decrypts with the libcrypto it carries for hashlib and ssl.
ONLINE_CONTEXTS = {
    "plain": ({"name": "demo", "pins": ["246802"]}, ""),
    "encrypted": ({"name": "sealed", "secret": "s3cret", "uuid": "1111" + "0" * 28, "pins": ["111103"]},
                  " ucernvm.pin_secret=s3cret"),
}


@pytest.mark.vm
@pytest.mark.parametrize("kind", sorted(ONLINE_CONTEXTS))
def test_boot_with_a_cernvm_online_pin(image: BuildResult, repository: BootRepository, tmp_path: Path, qemu: str,
                                       kind: str) -> None:
    definitions = tmp_path / "online.json"
    user_data = "#cloud-config\nruncmd: []\n[ucernvm-begin]\ncvmfs_tag=old\n[ucernvm-end]\n"
    entry, extra_options = ONLINE_CONTEXTS[kind]
    pin = entry["pins"][0]
    definitions.write_text(json.dumps({"contexts": [{**entry, "user_data": user_data}]}))
    server = subprocess.Popen(
        [sys.executable, "-m", "ucernvm", "serve", str(repository.stratum), "--port", "0", "--online", str(definitions),
         "--online-port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        lines = [server.stdout.readline() for _ in range(2)]  # the stratum line, then the Online API line
        online = next(line for line in lines if "online" in line.lower() or "api" in line.lower())
        port = int(online.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        cmdline = repository.cmdline(f"ucernvm.context=none ucernvm.pin={pin} ucernvm.service_url=http://{GUEST_HOST}:{port}"
                                     + extra_options)
        result = boot(image.output, new_disk(tmp_path / "d.raw"), cmdline, tmp_path / "pin.log",
                      ports=(*repository.ports, port))
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert result.code == 0, result.tail
    report = result.report
    assert report["context"]["source"] == "CernVM Online"
    assert report["context"]["online_context"] == entry["name"]
    assert report["snapshot"]["tag"] == "old"


@pytest.mark.vm
def test_boot_with_an_opennebula_cd_and_its_static_address(image: BuildResult, repository: BootRepository,
                                                          tmp_path: Path, qemu: str) -> None:
    user_data = b"#cloud-config\nruncmd: []\n[ucernvm-begin]\ncvmfs_tag=old\n[ucernvm-end]\n"
    # QEMU's user network: gateway 10.0.2.2, DNS 10.0.2.3; DHCP would have given 10.0.2.15.
    context_sh = ("# Context variables generated by OpenNebula\n"
                  f"EC2_USER_DATA='{base64.b64encode(user_data).decode()}'\n"
                  "ETH0_IP='10.0.2.42'\nETH0_MASK='255.255.255.0'\nETH0_GATEWAY='10.0.2.2'\nETH0_DNS='10.0.2.3'\n")
    cd = tmp_path / "one.iso"
    write_iso(cd, "CONTEXT", {"context.sh": context_sh.encode()})
    result = boot(image.output, new_disk(tmp_path / "d.raw"), repository.cmdline(), tmp_path / "one.log",
                  ports=repository.ports, context=cd)
    assert result.code == 0, result.tail
    report = result.report
    assert report["network"]["mode"] == "static" and report["network"]["address"] == "10.0.2.42/24"
    assert report["network"]["source"].startswith("OpenNebula context.sh on /dev/")
    assert report["context"]["source"] == "OpenNebula"
    assert report["snapshot"]["tag"] == "old"  # fetched over the static address, as the CD's user-data asked
    # The OS's cloud-init is told to keep that address (and its route and DNS server).
    (nic,) = json.loads(result.marker("UCERNVM-OS-NETWORK-CONFIG"))["ethernets"].values()
    assert (nic["addresses"], nic["routes"], nic["nameservers"]) == (
        ["10.0.2.42/24"], [{"to": "0.0.0.0/0", "via": "10.0.2.2"}], {"addresses": ["10.0.2.3"]})
