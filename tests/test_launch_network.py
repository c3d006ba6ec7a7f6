"""The VM's user network: isolation and guest forwards as QEMU options, and the per-connection relay."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ucernvm.errors import ConfigError
from ucernvm.launch.usernet import RELAY, GuestForward, loopback_forwards, netdev
from ucernvm.server import StratumServer


def test_isolated_network_options() -> None:
    spec = netdev(("tcp:8022:22",), ("10.0.2.2:8000=127.0.0.1:8001", "10.0.2.100:80=127.0.0.2:8080"), True)
    options = spec.split(",")
    assert options[:4] == ["user", "id=net0", "restrict=on", "host=10.0.2.1"]
    assert "hostfwd=tcp:127.0.0.1:8022-:22" in options
    relay = f"{sys.executable} -I -S {RELAY}"
    assert f"guestfwd=tcp:10.0.2.2:8000-cmd:{relay} 127.0.0.1 8001" in options
    assert f"guestfwd=tcp:10.0.2.100:80-cmd:{relay} 127.0.0.2 8080" in options
    assert netdev((), (), False) == "user,id=net0"
    assert loopback_forwards(8000, 9000) == ("10.0.2.2:8000=127.0.0.1:8000", "10.0.2.2:9000=127.0.0.1:9000")


def test_a_comma_in_the_relay_command_is_doubled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/opt/py,3/bin/python")
    assert "cmd:/opt/py,,3/bin/python -I -S" in GuestForward.parse("10.0.2.2:1=127.0.0.1:1").netdev_option()


@pytest.mark.parametrize(("spec", "isolated", "message"), [
    ("10.0.2.2:8000", True, "invalid guest forward"),
    ("10.0.2.2:8000=localhost:8000", True, "invalid guest forward"),
    ("10.0.2.2:8000=127.0.0.300:8000", True, "invalid address"),
    ("10.0.2.2:0=127.0.0.1:8000", True, "invalid port 0"),
    ("10.0.2.2:8000=127.0.0.1:70000", True, "invalid port 70000"),
    ("10.0.2.2:8000=127.0.0.1:8000", False, "address of QEMU itself"),
    ("10.0.2.1:8000=127.0.0.1:8000", True, "address of QEMU itself"),
    ("10.0.2.3:53=127.0.0.1:53", True, "DNS server"),
    ("10.0.2.15:80=127.0.0.1:80", True, "DHCP pool"),
    ("10.0.3.2:80=127.0.0.1:80", True, "outside the guest network"),
    ("10.0.2.255:80=127.0.0.1:80", True, "outside the guest network"),
])  # fmt: skip
def test_bad_guest_forwards_are_refused(spec: str, isolated: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        netdev((), (spec,), isolated)


def test_two_forwards_of_one_guest_address_are_refused() -> None:
    with pytest.raises(ConfigError, match="two guest forwards for 10.0.2.2:80"):
        netdev((), ("10.0.2.2:80=127.0.0.1:80", "10.0.2.2:80=127.0.0.1:81"), True)


def test_qemu_accepts_the_isolated_network() -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    spec = netdev(("tcp:0:22",), loopback_forwards(8000), True)
    result = subprocess.run([qemu, "-machine", "none", "-nodefaults", "-display", "none", "-S", "-monitor", "stdio",
                             "-netdev", spec], input=b"info network\nquit\n", capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert "type=user,net=10.0.2.0,restrict=on" in result.stdout.decode()


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two connected TCP sockets on loopback, as slirp makes for each forwarded connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        near = socket.create_connection(listener.getsockname())
        far, _ = listener.accept()
    return near, far


def _start_relay(host: str, port: int) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """The relay run as QEMU runs it: the guest's connection on its stdin, stdout and stderr."""
    guest, child = _tcp_pair()
    with child:
        process = subprocess.Popen([sys.executable, "-I", "-S", str(RELAY), host, str(port)],
                                   stdin=child, stdout=child, stderr=child)
    guest.settimeout(30)
    return guest, process


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StratumServer]:
    (tmp_path / "demo.cern.ch").mkdir()
    (tmp_path / "demo.cern.ch" / ".cvmfspublished").write_bytes(b"C0123\n" * 50_000)
    with StratumServer(tmp_path) as server:
        yield server


def test_relays_parallel_connections_to_the_host_service(server: StratumServer) -> None:
    expected = b"C0123\n" * 50_000
    relays = [_start_relay("127.0.0.1", server.port) for _ in range(3)]
    for guest, _ in relays:  # all three connections are open at once, each with its own relay
        guest.sendall(b"GET /cvmfs/demo.cern.ch/.cvmfspublished HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for guest, process in relays:
        with guest:
            head, _, body = _read_all(guest).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == expected
        assert process.wait(30) == 0


def test_a_guest_half_close_reaches_the_host_and_the_answer_still_comes_back(server: StratumServer) -> None:
    guest, process = _start_relay("127.0.0.1", server.port)
    with guest:
        guest.sendall(b"GET /cvmfs/demo.cern.ch/.cvmfspublished HTTP/1.1\r\nHost: x\r\n\r\n")
        guest.shutdown(socket.SHUT_WR)  # the keep-alive server only closes when it sees the end of requests
        assert _read_all(guest).startswith(b"HTTP/1.1 200")
    assert process.wait(30) == 0


def test_a_refused_host_connection_closes_the_guest_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    guest, process = _start_relay("127.0.0.1", port)
    with guest:
        assert _read_all(guest) == b""
    assert process.wait(30) == 1
