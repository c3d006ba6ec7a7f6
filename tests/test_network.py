"""The network stage against a real DHCP server (dnsmasq) in network namespaces the tests create.

Each lab is a "client" namespace, where the stage runs in a subprocess (``unshare --uts ip netns
exec``: its own network and hostname, never the host's), joined by veth pairs to "server" namespaces,
one of which may run dnsmasq. The host's interfaces are never touched. The parsers and the pyroute2
import shim are tested without root.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ucernvm.boot.net_dhcp import Lease, StaticRoute, classless_routes, domain_search
from ucernvm.boot.network import lease_routes, on_link, parse_static, resolv_conf
from ucernvm.boot.seed import network_config
from ucernvm.errors import ConfigError

from helpers import PROJECT
from ntp import chronyd

CLIENT_MAC = "02:00:00:00:00:11"
_names = itertools.count()


# --- without root: option parsers, route choice, knob syntax, the import shim ---------------------


def test_classless_routes_decode_rfc3442_widths() -> None:
    data = bytes([16, 10, 99, 10, 77, 0, 254, 0, 10, 77, 0, 1, 32, 192, 0, 2, 7, 0, 0, 0, 0, 24, 172, 16, 5, 10, 0, 0, 9])
    assert classless_routes(data) == (
        StaticRoute("10.99.0.0", 16, "10.77.0.254"),
        StaticRoute("0.0.0.0", 0, "10.77.0.1"),
        StaticRoute("192.0.2.7", 32, ""),  # router 0.0.0.0: on-link
        StaticRoute("172.16.5.0", 24, "10.0.0.9"),
    )
    assert classless_routes(data[:-1]) == ()  # truncated: the whole option is ignored
    assert classless_routes(bytes([33, 1, 2, 3, 4, 5, 0, 0, 0, 0])) == ()


def test_domain_search_follows_compression_pointers() -> None:
    # "example.test", then "lab." + pointer to "example.test" at offset 0 (RFC 3397 section 3)
    data = b"\x07example\x04test\x00\x03lab\xc0\x00"
    assert domain_search(data) == ("example.test", "lab.example.test")
    assert domain_search(b"\x03lab\xc0\x00") == ()  # a pointer that loops: nothing usable
    assert domain_search(b"") == ()


def _lease(**fields: object) -> Lease:
    base: dict = {"interface": "eth0", "address": "10.77.0.50", "prefix": 24, "server_id": "10.77.0.1", "lease_time": 3600}
    return Lease(**{**base, **fields})


def test_router_option_is_ignored_when_classless_routes_are_given() -> None:
    assert lease_routes(_lease(routers=("10.77.0.1",))) == [StaticRoute("0.0.0.0", 0, "10.77.0.1")]
    routes = (StaticRoute("10.99.0.0", 16, "10.77.0.254"),)
    assert lease_routes(_lease(routers=("10.77.0.1",), routes=routes)) == list(routes)
    assert lease_routes(_lease()) == []


def test_on_link_and_resolv_conf() -> None:
    assert on_link("10.77.0.50", 24, "10.77.0.1")
    assert not on_link("10.77.0.50", 32, "10.77.0.1")  # the GCE case: the router needs a host route
    assert not on_link("10.77.0.50", 24, "10.78.0.1")
    assert resolv_conf(("10.0.0.2", "10.0.0.3"), ("a.test", "b.test")) == (
        b"search a.test b.test\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"
    )
    assert resolv_conf(("10.0.0.2",), ()) == b"nameserver 10.0.0.2\n"


def test_static_knob_syntax() -> None:
    static = parse_static("static:10.0.0.5/24,10.0.0.1,10.0.0.2,10.0.0.3")
    assert (static.address, static.prefix, static.gateway, static.dns) == ("10.0.0.5", 24, "10.0.0.1", ("10.0.0.2", "10.0.0.3"))
    for bad in ("static:10.0.0.5,10.0.0.1", "static:10.0.0.5/33,10.0.0.1", "static:10.0.0.5/24", "static:10.0.0.5/24,gw",
                "static:10.1/24,10.0.0.1"):
        with pytest.raises(ConfigError) as caught:
            parse_static(bad)
        assert "static:" in caught.value.hint


def test_pyroute2_submodules_load_without_the_package_init() -> None:
    program = (
        "import sys\n"
        "from ucernvm.boot import network\n"
        "assert 'pyroute2.ndb' not in sys.modules and 'sqlite3' not in sys.modules and 'asyncio' not in sys.modules\n"
        "from pyroute2 import IPRoute\n"  # another user of pyroute2 still gets the whole package
        "assert 'pyroute2.ndb.main' in sys.modules, 'the package body did not run'\n"
        "import pyroute2; print(pyroute2.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("0.9.")


# --- as root, in network namespaces ---------------------------------------------------------------


def _lab_unavailable() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 util-linux)"
    probe = f"ucvm-probe-{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
        try:
            subprocess.run(["ip", "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0"],
                           check=True, capture_output=True, timeout=10)  # fmt: skip
        finally:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as error:
        return f"network namespaces or veth pairs are unavailable: {error}"
    return None


needs_lab = pytest.mark.skipif(_lab_unavailable() is not None, reason=str(_lab_unavailable()))
needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed (apt-get install dnsmasq-base)")

_DRIVER = """
import json, os, socket, sys, time
from ucernvm.boot.log import BootLog
from ucernvm.boot.network import network_stage
from ucernvm.boot.state import BootState
from ucernvm.boot.system import DryRunSystem, RealSystem
from ucernvm.config import BootConfig
from ucernvm.errors import UcernvmError
root, mode, timeout, dry_run = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4] == "dry"
if len(sys.argv) > 5:  # what an OpenNebula context.sh on a CD says (reading one is tested in test_context_sources)
    import ucernvm.boot.contextualize as contextualize
    from ucernvm.context.found import FoundContext, StaticInterface
    nics = tuple(StaticInterface(name, mac, address, gateway, tuple(dns), mtu)
                 for name, mac, address, gateway, dns, mtu in json.loads(sys.argv[5]))
    medium = FoundContext("OpenNebula", network=nics, device="/dev/sr0")
    contextualize.media_network = lambda state: medium
ntp = os.environ.get("LAB_NTP")  # then the clock stage too, recording (never setting the host's clock)
state = BootState(system=DryRunSystem() if dry_run else RealSystem(root=root), log=BootLog(console=sys.stderr),
                  config=BootConfig(network=mode, network_timeout=timeout, ntp=ntp or "off"))
start = time.monotonic()
try:
    network_stage(state)
    if ntp:
        from ucernvm.boot.clock import clock_stage
        state.system = DryRunSystem()
        clock_stage(state)
    result = {"facts": state.facts}
except UcernvmError as error:
    result = {"error": type(error).__name__, "message": error.message, "hint": error.hint}
result.update(seconds=time.monotonic() - start, actions=state.system.actions, hostname=socket.gethostname(),
              warnings=state.warnings)
print(json.dumps(result))
"""


class Lab:
    """A client namespace, the server namespaces wired to it, and the processes started in them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"ucvm{os.getpid()}n{next(_names)}"
        self.namespaces: list[str] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self.client = self._add("c")  # everything down, as a fresh VM

    def _add(self, suffix: str) -> str:
        name = f"{self.prefix}{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
        self.namespaces.append(name)
        return name

    def namespace(self, suffix: str) -> str:
        """A server namespace, loopback up."""
        name = self._add(suffix)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        return name

    def wire(self, nic: str, server: str, server_address: str, mac: str | None = None) -> None:
        """A veth pair: ``nic`` in the client namespace (left down), its peer up in ``server``."""
        mac_args = ["address", mac] if mac else []
        subprocess.run(["ip", "-n", self.client, "link", "add", nic, *mac_args, "type", "veth",
                        "peer", "name", f"peer-{nic}", "netns", server], check=True, timeout=10)  # fmt: skip
        subprocess.run(["ip", "-n", server, "addr", "add", server_address, "dev", f"peer-{nic}"], check=True, timeout=10)
        subprocess.run(["ip", "-n", server, "link", "set", f"peer-{nic}", "up"], check=True, timeout=10)

    def dnsmasq(self, server: str, nic: str, *options: str) -> Path:
        """dnsmasq serving DHCP (no DNS) on the peer of ``nic``; returns its log file."""
        log = self.tmp_path / f"dnsmasq-{server}.log"
        process = subprocess.Popen(
            ["ip", "netns", "exec", server, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
             "--user=root", f"--interface=peer-{nic}", "--bind-interfaces", "--no-ping", "--log-dhcp",
             f"--log-facility={log}", f"--dhcp-leasefile={self.tmp_path / f'leases-{server}'}", *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.servers.append(process)
        deadline = time.monotonic() + 10
        while "DHCP, IP range" not in (log.read_text() if log.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(f"dnsmasq did not start: {stderr}")
            time.sleep(0.05)
        return log

    def run_stage(self, mode: str = "dhcp", timeout: float = 10.0, dry_run: bool = False,
                  medium: list[tuple] | None = None, ntp: str | None = None) -> dict:
        """The network stage in the client namespace; ``medium``: StaticInterface fields of a context.sh;
        ``ntp``: then the clock stage with this ucernvm.ntp, recording what it would set."""
        root = self.tmp_path / "root"
        root.mkdir(exist_ok=True)
        result = subprocess.run(
            ["unshare", "--uts", "ip", "netns", "exec", self.client, sys.executable, "-c", _DRIVER,
             str(root), mode, str(timeout), "dry" if dry_run else "real", *([json.dumps(medium)] if medium else [])],
            capture_output=True, text=True, cwd=PROJECT, timeout=timeout + 60,
            env={**os.environ, "LAB_NTP": ntp or ""},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def ip(self, *args: str) -> list[dict]:
        output = subprocess.run(["ip", "-n", self.client, "-j", *args], check=True, capture_output=True, text=True)
        return json.loads(output.stdout or "[]")

    def ipv4(self, nic: str) -> list[str]:
        return [f"{a['local']}/{a['prefixlen']}" for link in self.ip("addr", "show", "dev", nic)
                for a in link["addr_info"] if a["family"] == "inet"]  # fmt: skip

    def routes(self) -> list[tuple[str, str, str]]:
        return sorted((r["dst"], r.get("gateway", ""), r["dev"]) for r in self.ip("-4", "route", "show"))

    def close(self) -> None:
        for process in self.servers:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


DHCP_OPTIONS = (
    "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
    "--dhcp-option=option:router,10.77.0.1",
    "--dhcp-option=option:dns-server,10.77.0.1,10.77.0.2",
    "--dhcp-option=option:domain-name,example.test",
    "--dhcp-option=option:domain-search,example.test,lab.example.test",
    "--dhcp-option=option:mtu,1400",
    # RFC 3442: with option 121 the router option (10.77.0.1) is ignored, the default route is 121's
    "--dhcp-option=option:classless-static-route,10.99.0.0/16,10.77.0.254,0.0.0.0/0,10.77.0.3",
    "--dhcp-option=option:ntp-server,10.77.0.1,10.77.0.2",
    f"--dhcp-host={CLIENT_MAC},client-one",
)


@needs_lab
@needs_dnsmasq
def test_dhcp_lease_configures_the_client(lab: Lab, tmp_path: Path) -> None:
    server = lab.namespace("s")
    lab.wire("eth0", server, "10.77.0.1/24", mac=CLIENT_MAC)
    lab.dnsmasq(server, "eth0", *DHCP_OPTIONS)

    result = lab.run_stage(timeout=10)

    assert "error" not in result, result
    facts = result["facts"]["network"]
    address = facts["address"]
    assert address.endswith("/24") and 50 <= int(address.split("/")[0].split(".")[3]) <= 99
    assert lab.ipv4("eth0") == [address]
    assert lab.ip("link", "show", "dev", "eth0")[0]["mtu"] == 1400
    assert "UP" in lab.ip("link", "show", "dev", "lo")[0]["flags"]
    assert lab.routes() == [("10.77.0.0/24", "", "eth0"), ("10.99.0.0/16", "10.77.0.254", "eth0"),
                            ("default", "10.77.0.3", "eth0")]  # fmt: skip
    assert (tmp_path / "root/etc/resolv.conf").read_text() == (
        "search example.test lab.example.test\nnameserver 10.77.0.1\nnameserver 10.77.0.2\n"
    )
    assert result["hostname"] == "client-one"
    assert facts["interface"] == "eth0" and facts["mode"] == "dhcp"
    assert facts["gateway"] == "10.77.0.3" and facts["dhcp_server"] == "10.77.0.1"
    assert facts["dns"] == ["10.77.0.1", "10.77.0.2"] and facts["search"] == ["example.test", "lab.example.test"]
    assert facts["mtu"] == 1400 and facts["lease_time"] == 3600 and facts["hostname"] == "client-one"
    assert 0 <= facts["seconds_to_lease"] < 10
    assert "10.99.0.0/16 via 10.77.0.254" in facts["routes"]
    assert facts["ntp"] == ["10.77.0.1", "10.77.0.2"]


@needs_lab
@needs_dnsmasq
def test_the_clock_asks_the_ntp_server_the_lease_names(lab: Lab, tmp_path: Path) -> None:
    """A site that blocks NTP to the outside names its own server in the lease (option 42): the clock
    stage asks it along with ucernvm.ntp's, here a silent address, and takes its answer."""
    server = lab.namespace("s")
    lab.wire("eth0", server, "10.77.0.1/24")
    lab.dnsmasq(server, "eth0", "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
                "--dhcp-option=option:ntp-server,10.77.0.1")  # fmt: skip
    with contextmanager(chronyd)(tmp_path, synchronised=True, namespace=server, address="10.77.0.1"):
        result = lab.run_stage(timeout=10, ntp="10.77.0.9")
    assert "error" not in result, result
    assert result["facts"]["network"]["ntp"] == ["10.77.0.1"]
    clock = result["facts"]["clock"]
    assert clock["server"] == "10.77.0.1" and abs(clock["offset"]) < 1, clock


@needs_lab
@needs_dnsmasq
def test_a_slash_32_lease_gets_a_host_route_to_its_router(lab: Lab) -> None:
    server = lab.namespace("s")
    lab.wire("eth0", server, "10.77.0.1/24")
    lab.dnsmasq(server, "eth0", "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
                "--dhcp-option=option:netmask,255.255.255.255", "--dhcp-option=option:router,10.77.0.1")  # fmt: skip

    result = lab.run_stage(timeout=10)

    assert "error" not in result, result
    assert lab.ipv4("eth0")[0].endswith("/32")
    assert lab.routes() == [("10.77.0.1", "", "eth0"), ("default", "10.77.0.1", "eth0")]
    assert result["facts"]["network"]["gateway"] == "10.77.0.1"


@needs_lab
@needs_dnsmasq
def test_a_lease_without_router_or_dns_server_is_a_warning(lab: Lab, tmp_path: Path) -> None:
    server = lab.namespace("s")
    lab.wire("eth0", server, "10.77.0.1/24")
    lab.dnsmasq(server, "eth0", "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
                "--dhcp-option=3", "--dhcp-option=6")  # empty: no router, no DNS server sent

    result = lab.run_stage(timeout=10)

    assert "error" not in result, result
    facts = result["facts"]["network"]
    assert facts["gateway"] == "" and facts["dns"] == []
    assert result["warnings"] == [
        "network: the DHCP lease of eth0 names no router: only 10.77.0.0/24 is reachable",
        "network: the DHCP lease of eth0 names no DNS server: host names (of servers, proxies, NTP) cannot be "
        "resolved",
    ]
    assert not (tmp_path / "root/etc/resolv.conf").exists()


@needs_lab
def test_no_dhcp_server_fails_within_the_timeout(lab: Lab, tmp_path: Path) -> None:
    silent = lab.namespace("s")
    lab.wire("eth0", silent, "10.77.0.1/24")

    result = lab.run_stage(timeout=2)

    assert result["error"] == "NetworkError"
    assert result["message"] == "no DHCP lease on eth0 within 2 s"
    assert "DHCP server" in result["hint"] and "static:" in result["hint"]
    assert 2.0 <= result["seconds"] < 3.0
    assert lab.ipv4("eth0") == []
    assert not (tmp_path / "root/etc/resolv.conf").exists()


@needs_lab
@needs_dnsmasq
def test_two_nics_only_the_second_answers(lab: Lab) -> None:
    silent, server = lab.namespace("q"), lab.namespace("s")
    lab.wire("eth0", silent, "10.76.0.1/24")
    lab.wire("eth1", server, "10.77.0.1/24")
    lab.dnsmasq(server, "eth1", "--dhcp-range=10.77.0.50,10.77.0.99,255.255.255.0,1h",
                "--dhcp-option=option:router,10.77.0.1")  # fmt: skip

    result = lab.run_stage(timeout=10)

    assert "error" not in result, result
    facts = result["facts"]["network"]
    assert facts["interface"] == "eth1"
    assert "run DHCP on eth0, eth1 (at most 10 s)" in result["actions"]
    assert lab.ipv4("eth1") == [facts["address"]] and lab.ipv4("eth0") == []
    assert ("default", "10.77.0.1", "eth1") in lab.routes()
    assert result["seconds"] < 5  # the silent NIC did not hold the stage to its timeout


@needs_lab
def test_static_configuration(lab: Lab, tmp_path: Path) -> None:
    peer = lab.namespace("s")
    lab.wire("eth0", peer, "10.77.0.1/24")

    result = lab.run_stage(mode="static:10.77.0.9/24,10.77.0.1,10.77.0.53")

    assert "error" not in result, result
    assert lab.ipv4("eth0") == ["10.77.0.9/24"]
    assert ("default", "10.77.0.1", "eth0") in lab.routes()
    assert (tmp_path / "root/etc/resolv.conf").read_text() == "nameserver 10.77.0.53\n"
    mac = lab.ip("link", "show", "dev", "eth0")[0]["address"]
    assert result["facts"]["network"] == {
        "mode": "static", "source": "ucernvm.net", "interface": "eth0", "address": "10.77.0.9/24",
        "gateway": "10.77.0.1", "dns": ["10.77.0.53"], "mtu": 1500,
        "interfaces": [{"name": "eth0", "mac": mac, "address": "10.77.0.9/24", "gateway": "10.77.0.1", "mtu": 1500}],
    }  # fmt: skip
    if shutil.which("ping"):  # the gateway answers: address and routes really work
        subprocess.run(["ip", "netns", "exec", lab.client, "ping", "-c", "1", "-W", "2", "10.77.0.1"], check=True,
                       capture_output=True)  # fmt: skip


@needs_lab
def test_an_opennebula_context_sh_configures_its_nics_instead_of_dhcp(lab: Lab, tmp_path: Path) -> None:
    peer = lab.namespace("s")
    lab.wire("eth0", peer, "10.77.0.1/24")
    lab.wire("eth1", peer, "10.88.0.1/24", mac="02:00:00:00:00:22")
    medium = [  # ETH0 by MAC (on the second NIC), ETH1 by number: the second NIC too; one default route
        ("eth0", "02:00:00:00:00:22", "10.88.0.9/24", "10.88.0.1", ["10.88.0.53"], 1400),
        ("eth1", "", "10.88.1.9/24", "10.88.1.1", ["10.88.0.53", "10.88.1.53"], None),
    ]

    result = lab.run_stage(medium=medium, timeout=3)  # no DHCP server: a DHCP attempt would fail

    assert "error" not in result, result
    assert lab.ipv4("eth1") == ["10.88.0.9/24", "10.88.1.9/24"] and lab.ipv4("eth0") == []
    assert ("default", "10.88.0.1", "eth1") in lab.routes()
    assert lab.ip("link", "show", "dev", "eth1")[0]["mtu"] == 1400
    assert (tmp_path / "root/etc/resolv.conf").read_text() == "nameserver 10.88.0.53\nnameserver 10.88.1.53\n"
    network = result["facts"]["network"]
    assert (network["mode"], network["source"], network["gateway"]) == (
        "static", "OpenNebula context.sh on /dev/sr0", "10.88.0.1")
    assert not any("DHCP" in action for action in result["actions"])
    # What the OS's cloud-init gets: the same settings, the NIC matched by its MAC and keeping its name.
    assert json.loads(network_config(network)) == {"version": 2, "ethernets": {"eth1": {
        "match": {"macaddress": "02:00:00:00:00:22"}, "set-name": "eth1", "addresses": ["10.88.0.9/24", "10.88.1.9/24"],
        "mtu": 1400, "routes": [{"to": "0.0.0.0/0", "via": "10.88.0.1"}],
        "nameservers": {"addresses": ["10.88.0.53", "10.88.1.53"]}}}}  # fmt: skip


@needs_lab
@needs_dnsmasq
def test_a_context_sh_naming_no_nic_here_leaves_the_network_to_dhcp(lab: Lab) -> None:
    server = lab.namespace("s")
    lab.wire("eth0", server, "10.77.0.1/24", mac=CLIENT_MAC)
    lab.dnsmasq(server, "eth0", *DHCP_OPTIONS)

    result = lab.run_stage(medium=[("eth0", "02:00:00:00:99:99", "10.99.0.9/24", "10.99.0.1", [], None)])

    assert "error" not in result, result
    assert result["facts"]["network"]["mode"] == "dhcp" and lab.ipv4("eth0")[0].startswith("10.77.0.")
    assert any("no NIC for eth0 with MAC 02:00:00:00:99:99" in warning for warning in result["warnings"])


@needs_lab
@needs_dnsmasq
def test_dry_run_changes_nothing_and_reports_the_host(lab: Lab) -> None:
    server = lab.namespace("s")
    lab.wire("eth0", server, "10.77.0.1/24", mac=CLIENT_MAC)
    subprocess.run(["ip", "-n", lab.client, "addr", "add", "10.77.0.200/24", "dev", "eth0"], check=True)
    log = lab.dnsmasq(server, "eth0", *DHCP_OPTIONS)
    before = (lab.ip("addr"), lab.ip("route"), lab.ip("link"))

    result = lab.run_stage(dry_run=True)

    assert (lab.ip("addr"), lab.ip("route"), lab.ip("link")) == before
    assert "DHCPDISCOVER" not in log.read_text()
    facts = result["facts"]["network"]
    assert facts["would"] == "run DHCP on eth0 (at most 10 s)"
    assert "set link eth0 up" in result["actions"]
    assert "10.77.0.200/24 dev eth0" in facts["addresses"]
    assert {"name": "eth0", "mac": CLIENT_MAC, "up": False, "mtu": 1500} in facts["links"]
    host_dns = [line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                if line.startswith("nameserver") and len(line.split()) > 1]  # fmt: skip
    assert facts["dns"] == host_dns
    assert result["hostname"] == socket.gethostname()
