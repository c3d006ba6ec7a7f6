"""QEMU's user network (slirp) for a VM: host-to-guest port forwards, isolation, guest-to-host forwards.

By default slirp opens, on the host, every connection the guest asks for: a boot that probes metadata
services at 169.254.169.254 or 10.1.1.1 really reaches out from the host. An *isolated* guest
(``restrict=on``) gets a DHCP lease without router or DNS server (slirp leaves them out), every TCP
connection it opens is refused (slirp answers the SYN with a reset) and every UDP datagram but DHCP's
is dropped, DNS included (slirp would relay it to the host's resolvers). Only the guest forwards reach
out: a connection to GUEST_IP:PORT is relayed to HOST_IP:PORT by ``relay.py``.

slirp refuses a forward at its own address, which is 10.0.2.2 by default; so an isolated guest's DHCP
server moves to 10.0.2.1, and "the host is 10.0.2.2" stays true for what is forwarded.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ucernvm.errors import ConfigError

GUEST_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")  # slirp's default network
HOST_ADDRESS = "10.0.2.2"  # the host as the guest sees it (slirp's own address unless isolated)
ISOLATED_GATEWAY = "10.0.2.1"  # slirp's own address (DHCP server) when isolated
DNS_ADDRESS = "10.0.2.3"
DHCP_POOL = (15, 31)  # slirp leases 10.0.2.15 to 10.0.2.30
RELAY = Path(__file__).with_name("relay.py")

_HOSTFWD_RE = re.compile(r"^(tcp|udp):(\d{1,5}):(\d{1,5})$")
_GUESTFWD_RE = re.compile(r"^([\d.]+):(\d{1,5})=([\d.]+):(\d{1,5})$")


@dataclass(frozen=True)
class GuestForward:
    """Guest connections to ``guest_ip:guest_port`` are relayed to ``host_ip:host_port`` on the host."""

    guest_ip: str
    guest_port: int
    host_ip: str
    host_port: int

    @classmethod
    def parse(cls, spec: str) -> GuestForward:
        hint = "use GUEST_IP:PORT=HOST_IP:PORT, e.g. 10.0.2.2:8000=127.0.0.1:8000"
        match = _GUESTFWD_RE.match(spec.strip())
        if match is None:
            raise ConfigError(f"invalid guest forward {spec!r}", hint=hint)
        guest_ip, guest_port, host_ip, host_port = match.groups()
        for address in (guest_ip, host_ip):
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ConfigError(f"invalid address {address!r} in guest forward {spec!r}", hint=hint) from None
        for port in (guest_port, host_port):
            if not 0 < int(port) < 65536:
                raise ConfigError(f"invalid port {port} in guest forward {spec!r}", hint=hint)
        return cls(guest_ip, int(guest_port), host_ip, int(host_port))

    def check_guest_address(self, gateway: str) -> None:
        """slirp only forwards addresses of its network that it does not use itself."""
        address = ipaddress.IPv4Address(self.guest_ip)
        last = int(address) & 0xFF
        used = {gateway: "the address of QEMU itself", DNS_ADDRESS: "the DNS server"}
        if address not in GUEST_NETWORK or last in (0, 255):
            reason = f"outside the guest network {GUEST_NETWORK}"
        elif self.guest_ip in used:
            reason = f"{used[self.guest_ip]} in the guest network"
        elif DHCP_POOL[0] <= last < DHCP_POOL[1]:
            reason = "in the guest network's DHCP pool (.15-.30)"
        else:
            return
        hint = "forward at 10.0.2.2 with --isolated, or at another free address such as 10.0.2.100"
        raise ConfigError(f"guest forward address {self.guest_ip} is {reason}", hint=hint)

    def netdev_option(self) -> str:
        """A ``guestfwd=`` that runs the relay for each connection (commas doubled for QEMU's parser)."""
        command = shlex.join([sys.executable, "-I", "-S", str(RELAY), self.host_ip, str(self.host_port)])
        return f"guestfwd=tcp:{self.guest_ip}:{self.guest_port}-cmd:{command}".replace(",", ",,")


def host_forward_option(spec: str) -> str:
    """``tcp:HOSTPORT:GUESTPORT`` as a ``hostfwd=`` bound to the host's 127.0.0.1."""
    match = _HOSTFWD_RE.match(spec)
    if match is None:
        raise ConfigError(f"invalid port forward {spec!r}", hint="use PROTO:HOSTPORT:GUESTPORT, e.g. tcp:8022:22")
    proto, host_port, guest_port = match.groups()
    return f"hostfwd={proto}:127.0.0.1:{host_port}-:{guest_port}"


def netdev(host_forwards: tuple[str, ...], guest_forwards: tuple[str, ...], isolated: bool) -> str:
    """The ``-netdev`` value of a user network with these forwards."""
    options = ["user", "id=net0"]
    gateway = HOST_ADDRESS
    if isolated:
        gateway = ISOLATED_GATEWAY
        options += ["restrict=on", f"host={gateway}"]
    options += [host_forward_option(spec) for spec in host_forwards]
    forwards = [GuestForward.parse(spec) for spec in guest_forwards]
    seen: set[tuple[str, int]] = set()
    for forward in forwards:
        forward.check_guest_address(gateway)
        if (forward.guest_ip, forward.guest_port) in seen:
            raise ConfigError(f"two guest forwards for {forward.guest_ip}:{forward.guest_port}")
        seen.add((forward.guest_ip, forward.guest_port))
    options += [forward.netdev_option() for forward in forwards]
    return ",".join(options)


def loopback_forwards(*ports: int) -> tuple[str, ...]:
    """Guest forwards that show the host's 127.0.0.1:PORT services at 10.0.2.2:PORT."""
    return tuple(f"{HOST_ADDRESS}:{port}=127.0.0.1:{port}" for port in ports)
