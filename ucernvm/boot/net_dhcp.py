"""DHCPv4 on several interfaces at once; the first lease wins. Packets are coded by pyroute2.

pyroute2's own client (``pyroute2.dhcp.client.AsyncDHCPClient``) runs on asyncio and looks links
up through ``IPRoute``: importing it costs 0.15 s natively, 2-3 s under TCG emulation, and its
xids come from ``secrets`` (os.urandom, which can block before the kernel's CRNG is ready at
boot). This module keeps pyroute2's DHCP packet class (``dhcp4msg``), its Ethernet/IPv4/UDP
headers and its BPF compiler, and drives DISCOVER/OFFER/REQUEST/ACK itself with one raw socket
per interface and one ``selectors`` loop; the lease stays in memory.
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import time

from ucernvm.boot import net_pyroute2
from ucernvm.records import NamedTuple

net_pyroute2.load()

from pyroute2.common import dqn2int  # noqa: E402
from pyroute2.dhcp.dhcp4msg import dhcp4msg  # noqa: E402
from pyroute2.dhcp.enums.bootp import Flag, MessageType as BootpType  # noqa: E402
from pyroute2.dhcp.enums.dhcp import MessageType, Option  # noqa: E402
from pyroute2.ext.bpf import BPF, compile as compile_bpf  # noqa: E402
from pyroute2.protocols import ethmsg, ip4msg, udp4_pseudo_header, udpmsg  # noqa: E402

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
CLIENT_PORT, SERVER_PORT = 68, 67
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"

PARAMETERS = (
    Option.SUBNET_MASK, Option.ROUTER, Option.NAME_SERVER, Option.HOST_NAME, Option.DOMAIN_NAME,
    Option.INTERFACE_MTU, Option.BROADCAST_ADDRESS, Option.LEASE_TIME, Option.SERVER_ID,
    Option.RENEWAL_TIME, Option.REBINDING_TIME, Option.DOMAIN_SEARCH, Option.CLASSLESS_STATIC_ROUTE,
    Option.NTP_SERVERS,
)  # fmt: skip

# Kernel filter: IPv4 (the socket's protocol) + UDP, not a fragment, destination port 68.
_FILTER = [
    [BPF.LD + BPF.B + BPF.ABS, 0, 0, 23],
    [BPF.JMP + BPF.JEQ + BPF.K, 0, 6, socket.IPPROTO_UDP],
    [BPF.LD + BPF.H + BPF.ABS, 0, 0, 20],
    [BPF.JMP + BPF.JSET + BPF.K, 4, 0, 0x1FFF],
    [BPF.LDX + BPF.B + BPF.MSH, 0, 0, 14],
    [BPF.LD + BPF.H + BPF.IND, 0, 0, 16],
    [BPF.JMP + BPF.JEQ + BPF.K, 0, 1, CLIENT_PORT],
    [BPF.RET + BPF.K, 0, 0, 0xFFFF],
    [BPF.RET + BPF.K, 0, 0, 0],
]
# The socket option's bytes point into the compiled program: both live as long as the module.
_FILTER_OPTION, _FILTER_PROGRAM = compile_bpf(_FILTER)

FIRST_RETRY, MAX_RETRY = 1.0, 4.0  # seconds between retransmissions: 1, 2, 4, 4... (a boot cannot wait 64 s)
REQUEST_TRIES = 3  # REQUESTs without an ACK before starting over with a DISCOVER


class Interface(NamedTuple):
    name: str
    mac: str


class StaticRoute(NamedTuple):
    destination: str
    prefix: int
    gateway: str  # "" for an on-link route (router 0.0.0.0 in option 121)


class Lease(NamedTuple):
    interface: str
    address: str
    prefix: int
    server_id: str
    lease_time: int | None  # seconds; None for an infinite lease
    routers: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    mtu: int | None = None
    routes: tuple[StaticRoute, ...] = ()  # option 121
    hostname: str = ""
    broadcast: str | None = None
    ntp: tuple[str, ...] = ()  # option 42: the site's NTP servers, which the clock stage asks too
    seconds: float = 0.0  # from the first DISCOVER to the ACK


def classless_routes(data: bytes) -> tuple[StaticRoute, ...]:
    """Option 121 (RFC 3442): width, significant destination octets, router; malformed means none."""
    routes = []
    offset = 0
    while offset < len(data):
        width = data[offset]
        significant = (width + 7) // 8
        end = offset + 1 + significant + 4
        if width > 32 or end > len(data):
            return ()
        destination = socket.inet_ntoa(data[offset + 1 : offset + 1 + significant].ljust(4, b"\0"))
        router = socket.inet_ntoa(data[end - 4 : end])
        routes.append(StaticRoute(destination, width, "" if router == "0.0.0.0" else router))
        offset = end
    return tuple(routes)


def domain_search(data: bytes) -> tuple[str, ...]:
    """Option 119 (RFC 3397): DNS names in wire format, with compression pointers into the option."""
    names: list[str] = []
    offset = 0
    while offset < len(data):
        labels: list[str] = []
        position, end, jumps = offset, None, 0
        while True:
            if position >= len(data) or jumps > len(data):
                return tuple(names)  # truncated or looping: keep what decoded
            length = data[position]
            if length & 0xC0 == 0xC0:
                if position + 1 >= len(data):
                    return tuple(names)
                end = position + 2 if end is None else end
                position = ((length & 0x3F) << 8) | data[position + 1]
                jumps += 1
            elif length == 0:
                end = position + 1 if end is None else end
                break
            else:
                labels.append(data[position + 1 : position + 1 + length].decode("ascii", "replace"))
                position += 1 + length
        if labels:
            names.append(".".join(labels))
        offset = end
    return tuple(names)


def _checksum(data: bytes) -> int:
    # The Internet checksum; pyroute2 keeps its copy on the raw socket class of its asyncio client.
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _frame(source_mac: str, payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP around a DHCP payload, broadcast from 0.0.0.0:68 to 255.255.255.255:67."""
    length = 8 + len(payload)
    pseudo = udp4_pseudo_header({"src": "0.0.0.0", "dst": "255.255.255.255", "len": length}).encode().buf
    header = udpmsg({"sport": CLIENT_PORT, "dport": SERVER_PORT, "len": length, "csum": 0}).encode().buf
    udp = udpmsg({"sport": CLIENT_PORT, "dport": SERVER_PORT, "len": length,
                  "csum": _checksum(bytes(pseudo + header) + payload)}).encode().buf  # fmt: skip
    ip = {"len": 20 + length, "proto": socket.IPPROTO_UDP, "ttl": 64, "src": "0.0.0.0", "dst": "255.255.255.255"}
    ip["csum"] = _checksum(bytes(ip4msg(dict(ip, csum=0)).encode().buf))
    ethernet = ethmsg({"dst": BROADCAST_MAC, "src": source_mac, "type": ETH_P_IP}).encode().buf
    return bytes(ethernet + ip4msg(ip).encode().buf + udp) + payload


class _Exchange:
    """DISCOVER, OFFER, REQUEST, ACK on one interface (the RFC 2131 INIT/SELECTING/REQUESTING states)."""

    def __init__(self, interface: Interface, started: float) -> None:
        self.interface = interface
        self.started = started
        self.socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0)
        try:
            # Protocol 0 until bound: nothing is queued before the filter is in place.
            self.socket.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _FILTER_OPTION)
            self.socket.bind((interface.name, ETH_P_IP))
        except OSError:
            self.socket.close()
            raise
        self.xid = random.getrandbits(32)  # not secrets: it may block before the CRNG is ready
        self.offer: dict | None = None
        self._discover(started)

    def _discover(self, now: float) -> None:
        self.offer = None
        self.tries = 0
        self.next_send, self.retry = now, FIRST_RETRY

    def send(self, now: float) -> None:
        options: dict = {
            "message_type": MessageType.REQUEST if self.offer else MessageType.DISCOVER,
            "parameter_list": [int(option) for option in PARAMETERS],
            "client_id": {"type": 1, "key": self.interface.mac},
        }
        if self.offer:
            options["requested_ip"] = self.offer["yiaddr"]
            options["server_id"] = self.offer["options"]["server_id"]
        message = dhcp4msg({
            "op": BootpType.BOOTREQUEST, "flags": Flag.BROADCAST, "xid": self.xid,
            "secs": min(int(now - self.started), 0xFFFF), "chaddr": self.interface.mac, "options": options,
        })  # fmt: skip
        try:
            self.socket.send(_frame(self.interface.mac, bytes(message.encode().buf)))
        except OSError:
            pass  # link not ready (ENETDOWN, no carrier yet): the next retransmission tries again
        if self.offer:
            self.tries += 1
            if self.tries > REQUEST_TRIES:
                self._discover(now)
                return
        self.next_send = now + self.retry + random.uniform(0, 0.25)
        self.retry = min(self.retry * 2, MAX_RETRY)

    def receive(self, now: float) -> Lease | None:
        try:
            data = self.socket.recv(4096)
        except OSError:
            return None
        try:
            ethernet = ethmsg(buf=data).decode()
            ip = ip4msg(buf=data, offset=ethernet.offset).decode()
            udp = udpmsg(buf=data, offset=ip.offset).decode()
            reply = dhcp4msg(buf=data, offset=udp.offset).decode()
        except (ValueError, struct.error):
            return None
        options = reply.get("options") or {}
        if (udp["dport"] != CLIENT_PORT or reply["op"] != BootpType.BOOTREPLY or reply["xid"] != self.xid
                or reply["chaddr"] != self.interface.mac or "server_id" not in options):  # fmt: skip
            return None
        kind = options.get("message_type")
        if kind == MessageType.OFFER and self.offer is None:
            self.offer = reply
            self.tries = 0
            self.retry = FIRST_RETRY
            self.send(now)
        elif kind == MessageType.ACK and self.offer is not None:
            return self._lease(reply, now)
        elif kind == MessageType.NAK and self.offer is not None:
            self._discover(now)
        return None

    def _lease(self, ack: dict, now: float) -> Lease:
        options = ack["options"]
        lease_time = options.get("lease_time")
        mtu = options.get("interface_mtu")
        return Lease(
            interface=self.interface.name,
            address=ack["yiaddr"],
            prefix=dqn2int(options.get("subnet_mask", "255.255.255.255")),
            server_id=options["server_id"],
            lease_time=None if lease_time is None or lease_time < 0 else lease_time,
            routers=tuple(options.get("router", ())),
            dns=tuple(options.get("name_server", ())),
            domain=options.get("domain_name", ""),
            search=domain_search(bytes(options.get("domain_search", ()))),
            mtu=mtu if isinstance(mtu, int) and mtu >= 68 else None,  # 68: the least IPv4 MTU (RFC 791)
            routes=classless_routes(bytes(options.get("classless_static_route", ()))),
            hostname=options.get("host_name", ""),
            broadcast=options.get("broadcast_address"),
            ntp=tuple(options.get("ntp_servers", ())),
            seconds=now - self.started,
        )


def first_lease(interfaces: list[Interface], timeout: float) -> Lease | None:
    """DHCP on every interface in parallel; the first ACK within ``timeout`` seconds, else None.

    The other exchanges stop when one succeeds: the boot continues on the interface that answered.
    An interface whose socket cannot be opened is left out; none at all raises OSError.
    """
    started = time.monotonic()
    deadline = started + timeout
    exchanges: list[_Exchange] = []
    error: OSError | None = None
    for interface in interfaces:
        try:
            exchanges.append(_Exchange(interface, started))
        except OSError as failure:
            error = failure
    if not exchanges:
        raise error or OSError("no interface to run DHCP on")
    try:
        with selectors.DefaultSelector() as selector:
            for exchange in exchanges:
                selector.register(exchange.socket, selectors.EVENT_READ, exchange)
            while (now := time.monotonic()) < deadline:
                for exchange in exchanges:
                    if exchange.next_send <= now:
                        exchange.send(now)
                wake = min(deadline, *(exchange.next_send for exchange in exchanges))
                for key, _ in selector.select(max(0.0, wake - now)):
                    lease = key.data.receive(time.monotonic())
                    if lease is not None:
                        return lease
        return None
    finally:
        for exchange in exchanges:
            exchange.socket.close()
