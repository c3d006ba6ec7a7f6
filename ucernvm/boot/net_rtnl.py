"""Links, addresses and routes over rtnetlink: pyroute2's message classes on a plain socket.

pyroute2's ``IPRoute`` would do this, but importing it costs 0.13 s natively (asyncio, the netns
helpers, multiprocessing, unittest.mock, every tc and link plugin): seconds under TCG emulation. The
message classes encode and decode the same rtnetlink structures; the socket and the request/ack
loop around them are a few lines.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any

from ucernvm.boot import net_pyroute2
from ucernvm.records import NamedTuple

net_pyroute2.load()

from pyroute2.netlink import (  # noqa: E402
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    nla,
    nlmsg,
    nlmsgerr,
)
from pyroute2.netlink.rtnl import (  # noqa: E402
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
ARPHRD_ETHER = 1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTPROT_DHCP = 16
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1



class linkmsg(nlmsg):
    """struct ifinfomsg with the attributes the boot reads and sets, declared with pyroute2's message
    classes. pyroute2's own ``ifinfmsg`` declares every attribute and kind of link the kernel knows: it
    imports 15 plugin modules, ``pyroute2.config`` with multiprocessing and pickle, and platform, about
    0.1 s under emulation for four attributes. Attributes not declared here are skipped when decoding."""

    prefix = "IFLA_"
    fields = (("family", "B"), ("__align", "x"), ("ifi_type", "H"), ("index", "i"), ("flags", "I"), ("change", "I"))
    nla_map = ((1, "IFLA_ADDRESS", "l2addr"), (3, "IFLA_IFNAME", "asciiz"), (4, "IFLA_MTU", "uint32"),
               (18, "IFLA_LINKINFO", "linkinfo"))  # include/uapi/linux/if_link.h

    class linkinfo(nla):
        prefix = "IFLA_INFO_"
        nla_map = ((1, "IFLA_INFO_KIND", "asciiz"),)


_DECODERS = {RTM_NEWLINK: linkmsg, RTM_NEWADDR: ifaddrmsg, RTM_NEWROUTE: rtmsg}
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr


# Records are NamedTuples: their classes are built several times faster than dataclasses, and every
# class built at import is paid again, ten times over, under emulation.
class Link(NamedTuple):
    ifindex: int
    name: str
    mac: str
    arp_type: int  # ARPHRD_*: 1 is Ethernet (and veth, virtio, e1000...), 772 loopback
    kind: str  # IFLA_INFO_KIND of virtual links (veth, bridge...), "" for hardware
    up: bool
    carrier: bool
    mtu: int


class Address(NamedTuple):
    ifindex: int
    family: int
    address: str
    prefix: int


class Route(NamedTuple):
    family: int
    destination: str
    prefix: int
    gateway: str
    ifindex: int  # output interface, 0 when the route has none (e.g. unreachable)


class Rtnl:
    """One NETLINK_ROUTE socket; requests wait for the kernel's answer, errors become OSError."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self._socket.bind((0, 0))
        self._sequence = 0

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_: object) -> None:
        self._socket.close()

    def _request(self, message: Any, kind: int, flags: int) -> list[Any]:
        self._sequence += 1
        message["header"]["type"] = kind
        message["header"]["flags"] = NLM_F_REQUEST | flags
        message["header"]["sequence_number"] = self._sequence
        message.encode()
        self._socket.send(message.data)
        answers: list[Any] = []
        while True:
            data = self._socket.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, sequence, _ = _HEADER.unpack_from(data, offset)
                chunk, offset = data[offset : offset + length], offset + max(length, _HEADER.size)
                if sequence != self._sequence:
                    continue
                if kind == NLMSG_DONE:
                    return answers
                if kind == NLMSG_ERROR:
                    error = nlmsgerr(chunk)
                    error.decode()
                    if error["error"]:
                        code = -error["error"]
                        raise OSError(code, os.strerror(code))
                    return answers  # the acknowledgement of a request without NLM_F_DUMP
                decoder = _DECODERS.get(kind)
                if decoder is not None:
                    answer = decoder(chunk)
                    answer.decode()
                    answers.append(answer)

    def links(self) -> list[Link]:
        request = linkmsg()
        request["family"] = socket.AF_UNSPEC
        result = []
        for message in self._request(request, RTM_GETLINK, NLM_F_DUMP):
            flags = message["flags"]
            result.append(Link(
                ifindex=message["index"],
                name=message.get_attr("IFLA_IFNAME") or "",
                mac=message.get_attr("IFLA_ADDRESS") or "",
                arp_type=message["ifi_type"],
                kind=message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or "",
                up=bool(flags & IFF_UP),
                carrier=bool(flags & IFF_LOWER_UP),
                mtu=message.get_attr("IFLA_MTU") or 0,
            ))  # fmt: skip
        return result

    def addresses(self) -> list[Address]:
        request = ifaddrmsg()
        request["family"] = socket.AF_UNSPEC
        return [
            Address(message["index"], message["family"],
                    message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS"), message["prefixlen"])
            for message in self._request(request, RTM_GETADDR, NLM_F_DUMP)
        ]  # fmt: skip

    def routes(self) -> list[Route]:
        """Unicast routes of the main table, both families."""
        request = rtmsg()
        request["family"] = socket.AF_UNSPEC
        result = []
        for message in self._request(request, RTM_GETROUTE, NLM_F_DUMP):
            table = message.get_attr("RTA_TABLE") or message["table"]
            if table != RT_TABLE_MAIN or message["type"] != RTN_UNICAST:
                continue
            family = message["family"]
            any_address = "0.0.0.0" if family == socket.AF_INET else "::"
            result.append(Route(family, message.get_attr("RTA_DST") or any_address, message["dst_len"],
                                message.get_attr("RTA_GATEWAY") or "", message.get_attr("RTA_OIF") or 0))
        return result

    def set_link(self, index: int, up: bool = True, mtu: int | None = None) -> None:
        request = linkmsg()
        request["index"] = index
        request["flags"] = IFF_UP if up else 0
        request["change"] = IFF_UP
        request["attrs"] = [("IFLA_MTU", mtu)] if mtu else []
        self._request(request, RTM_NEWLINK, NLM_F_ACK)

    def add_address(self, index: int, address: str, prefix: int, broadcast: str | None = None) -> None:
        request = ifaddrmsg()
        request["family"] = socket.AF_INET
        request["prefixlen"] = prefix
        request["index"] = index
        request["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        if broadcast:
            request["attrs"].append(("IFA_BROADCAST", broadcast))
        self._request(request, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)

    def add_route(self, index: int, destination: str, prefix: int, gateway: str | None, protocol: int) -> None:
        """Add or replace an IPv4 route; without a gateway it is on-link (scope link)."""
        request = rtmsg()
        request["family"] = socket.AF_INET
        request["dst_len"] = prefix
        request["table"] = RT_TABLE_MAIN
        request["proto"] = protocol
        request["scope"] = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        request["type"] = RTN_UNICAST
        request["attrs"] = [("RTA_OIF", index)]
        if prefix:
            request["attrs"].append(("RTA_DST", destination))
        if gateway:
            request["attrs"].append(("RTA_GATEWAY", gateway))
        self._request(request, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
