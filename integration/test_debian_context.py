"""The Debian appliance contextualized from outside the VM: its user-data (the same #cloud-config and
ucernvm part as the context ISO's in test_debian_boot) from an EC2 metadata service that requires
IMDSv2, and from CernVM Online for a PIN, each a real server on the host that the isolated guest reaches
through a forwarded port. The kernel command line names a server that does not exist
(debian_stream.CMDLINE): the boot works only if the context's [ucernvm-begin] server and tag were
honoured; the guest's checks pass only if its cloud-init applied the #cloud-config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from boot_env import GUEST_HOST, BootResult, boot, build_boot_image, new_disk
from debian_guest import GUEST_MEMORY, GuestReport, guest_context, read_report
from debian_stream import CMDLINE, SCRATCH_SIZE, TIMEOUT, StreamedOs, user_data
from metadata_fakes import Cloud, metadata_server

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def image(debian_streamed: StreamedOs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_boot_image(tmp_path_factory.mktemp("debian-context-image") / "image", debian_streamed.keys).output


def boot_with(streamed: StreamedOs, image: Path, work: Path, options: str, port: int) -> tuple[GuestReport, BootResult]:
    """A cold boot with no context medium; ``port``: the context server's, forwarded to the guest."""
    result = boot(image, new_disk(work / "scratch.raw", SCRATCH_SIZE), f"{CMDLINE} {options}", work / "console.log",
                  ports=(streamed.server.port, port), memory=GUEST_MEMORY, timeout=TIMEOUT)
    guest = read_report(result.serial)
    assert guest.problems() == [], f"{guest.problems()}\n{result.tail}"
    assert result.code == 0, f"the guest did not power itself off cleanly\n{result.tail}"
    return guest, result


def test_debian_with_user_data_from_ec2_imdsv2(debian_streamed: StreamedOs, image: Path, tmp_path: Path,
                                               qemu: str) -> None:
    # The instance's own SSH keys stay out of it: the appliance has no default user to give them to.
    cloud = Cloud("ec2", user_data=user_data(guest_context(), debian_streamed.server.port), imdsv2_required=True,
                  public_keys=())
    with metadata_server(cloud) as address:
        port = int(address.rsplit(":", 1)[1])
        _, result = boot_with(debian_streamed, image, tmp_path, f"ucernvm.metadata={GUEST_HOST}:{port}", port)
    assert "/latest/api/token" in cloud.paths()  # the token first: IMDSv1 is refused by this service
    assert "context from EC2" in result.serial


def test_debian_with_a_cernvm_online_pin(debian_streamed: StreamedOs, image: Path, tmp_path: Path, qemu: str) -> None:
    pin = "246802"
    definitions = tmp_path / "online.json"
    context = user_data(guest_context(), debian_streamed.server.port).decode()
    definitions.write_text(json.dumps({"contexts": [{"name": "debian", "pins": [pin], "user_data": context}]}))
    online = subprocess.Popen(
        [sys.executable, "-m", "ucernvm", "serve", debian_streamed.server.root, "--port", "0",
         "--online", str(definitions), "--online-port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        lines = [online.stdout.readline() for _ in range(2)]  # the stratum's line, then the Online API's
        api = next(line for line in lines if "online" in line.lower() or "api" in line.lower())
        port = int(api.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        options = f"ucernvm.context=none ucernvm.pin={pin} ucernvm.service_url=http://{GUEST_HOST}:{port}"
        _, result = boot_with(debian_streamed, image, tmp_path, options, port)
    finally:
        online.terminate()
        online.wait(timeout=10)
    assert "context from CernVM Online" in result.serial
