"""The network stage: loopback and every NIC up, DHCP on all NICs at once, then address, MTU, routes,
resolv.conf and hostname from the first lease (µCernVM's 02network). Static settings replace DHCP:
``ucernvm.net=static:...``, else an OpenNebula context.sh on a CD or vfat medium (µCernVM's one_network).

pyroute2 codes every netlink and DHCP message; ``net_pyroute2`` keeps its package ``__init__`` from
running, ``net_rtnl`` and ``net_dhcp`` put those messages on plain sockets (see their docstrings for
the measured reasons). A dry run changes nothing: it records the plan and reports the host's current
links, addresses, routes and DNS, read over netlink.
"""

from __future__ import annotations

import os
import socket

from ucernvm.boot.net_dhcp import Interface, Lease, StaticRoute, first_lease
from ucernvm.boot.net_rtnl import ARPHRD_ETHER, RTPROT_BOOT, RTPROT_DHCP, Link, Rtnl
from ucernvm.boot.state import BootState
from ucernvm.boot.system import MakeDirs, WriteFile
from ucernvm.context.found import OPEN_NEBULA
from ucernvm.errors import ConfigError, NetworkError
from ucernvm.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ucernvm.context.found import FoundContext, StaticInterface

STATIC_HINT = "use ucernvm.net=static:<address>/<prefix>,<gateway>[,<dns>...], e.g. static:10.0.0.5/24,10.0.0.1,10.0.0.2"


def _refused(action: str, error: OSError) -> NetworkError:
    return NetworkError(f"{action}: {error.strerror or error}")


class SetLink(NamedTuple):
    ifindex: int
    name: str
    mtu: int | None = None

    def describe(self) -> str:
        return f"set link {self.name} up" + (f" with MTU {self.mtu}" if self.mtu else "")

    def apply(self) -> None:
        try:
            with Rtnl() as rtnl:
                rtnl.set_link(self.ifindex, up=True, mtu=self.mtu)
        except OSError as error:
            raise _refused(self.describe(), error) from None


class AddAddress(NamedTuple):
    ifindex: int
    name: str
    address: str
    prefix: int
    broadcast: str | None = None

    def describe(self) -> str:
        return f"add address {self.address}/{self.prefix} to {self.name}"

    def apply(self) -> None:
        try:
            with Rtnl() as rtnl:
                rtnl.add_address(self.ifindex, self.address, self.prefix, self.broadcast)
        except OSError as error:
            raise _refused(self.describe(), error) from None


class AddRoute(NamedTuple):
    ifindex: int
    name: str
    destination: str
    prefix: int
    gateway: str  # "" for an on-link route
    protocol: int = RTPROT_DHCP

    def describe(self) -> str:
        target = "default" if self.prefix == 0 else f"{self.destination}/{self.prefix}"
        return f"add route {target} " + (f"via {self.gateway} " if self.gateway else "") + f"dev {self.name}"

    def apply(self) -> None:
        try:
            with Rtnl() as rtnl:
                rtnl.add_route(self.ifindex, self.destination, self.prefix, self.gateway or None, self.protocol)
        except OSError as error:
            raise _refused(self.describe(), error) from None


class RequestLease(NamedTuple):
    """DHCP on these NICs at once; applying it answers with the first Lease, or None."""

    interfaces: tuple[Interface, ...]
    timeout: float

    def describe(self) -> str:
        return f"run DHCP on {', '.join(i.name for i in self.interfaces)} (at most {self.timeout:g} s)"

    def apply(self) -> Lease | None:
        try:
            return first_lease(list(self.interfaces), self.timeout)
        except OSError as error:
            raise _refused(self.describe(), error) from None


class SetHostname(NamedTuple):
    name: str

    def describe(self) -> str:
        return f"set hostname {self.name}"

    def apply(self) -> None:
        try:
            socket.sethostname(self.name)
        except OSError as error:
            raise _refused(self.describe(), error) from None


class StaticConfig(NamedTuple):
    address: str
    prefix: int
    gateway: str
    dns: tuple[str, ...]


def parse_static(value: str) -> StaticConfig:
    """``static:<address>/<prefix>,<gateway>[,<dns>...]`` (the ``network`` knob)."""
    fields = [field.strip() for field in value.removeprefix("static:").split(",")]
    address, _, prefix = fields[0].partition("/")
    if len(fields) < 2 or not prefix.isdigit() or not 0 <= int(prefix) <= 32:
        raise ConfigError(f"network={value!r} is not static:<address>/<prefix>,<gateway>[,<dns>...]", STATIC_HINT)
    for text in (address, *fields[1:]):
        try:
            socket.inet_pton(socket.AF_INET, text)  # strict dotted quad (inet_aton takes "10.1" too)
        except OSError:
            raise ConfigError(f"network={value!r}: {text!r} is not an IPv4 address", STATIC_HINT) from None
    return StaticConfig(address, int(prefix), fields[1], tuple(fields[2:]))


def physical_nics(links: list[Link]) -> list[Link]:
    """Ethernet NICs backed by a device (virtio, e1000, ...); inside a container or network namespace,
    where every link is virtual, every Ethernet link (veth)."""
    ethernet = [link for link in links if link.arp_type == ARPHRD_ETHER and link.name != "lo"]
    # /sys is the kernel's view (never under the System's root); a device link means hardware.
    physical = [link for link in ethernet if os.path.exists(f"/sys/class/net/{link.name}/device")]
    return sorted(physical or ethernet, key=lambda link: link.ifindex)


def _number(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")


def _mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def on_link(address: str, prefix: int, gateway: str) -> bool:
    return (_number(address) ^ _number(gateway)) & _mask(prefix) == 0


def subnet(address: str, prefix: int) -> str:
    """The network an address is in, as ``10.0.0.0/24``."""
    return f"{socket.inet_ntoa((_number(address) & _mask(prefix)).to_bytes(4, 'big'))}/{prefix}"


def lease_routes(lease: Lease) -> list[StaticRoute]:
    """Option 121 when present, else a default route via the first router.

    RFC 3442: a client that receives classless static routes MUST ignore the router option (servers
    that mean a default route put 0.0.0.0/0 in option 121); Debian's dhclient and systemd-networkd
    do the same.
    """
    if lease.routes:
        return list(lease.routes)
    return [StaticRoute("0.0.0.0", 0, lease.routers[0])] if lease.routers else []


def _add_routes(state: BootState, nic: Link, address: str, prefix: int, routes: list[StaticRoute], protocol: int) -> None:
    reachable: set[str] = set()
    for route in routes:
        if route.gateway and not on_link(address, prefix, route.gateway) and route.gateway not in reachable:
            # A router outside the subnet (GCE hands out /32 addresses): a host route to it first, as
            # µCernVM's "fixing broken DHCP"; the kernel refuses a gateway it cannot reach otherwise.
            state.system.do(AddRoute(nic.ifindex, nic.name, route.gateway, 32, "", protocol))
            reachable.add(route.gateway)
        state.system.do(AddRoute(nic.ifindex, nic.name, route.destination, route.prefix, route.gateway, protocol))


def resolv_conf(dns: tuple[str, ...], search: tuple[str, ...]) -> bytes:
    lines = [f"search {' '.join(search)}"] if search else []
    lines += [f"nameserver {server}" for server in dns]
    return "".join(f"{line}\n" for line in lines).encode()


def _write_resolv_conf(state: BootState, dns: tuple[str, ...], search: tuple[str, ...]) -> None:
    path = state.system.path("/etc/resolv.conf")
    state.system.do(MakeDirs(str(path.parent)))
    state.system.do(WriteFile(str(path), resolv_conf(dns, search)))


def _search_domains(lease: Lease) -> tuple[str, ...]:
    # Option 119 is the search list; option 15 (the own domain) leads it when the server sent both.
    domains = ((lease.domain,) if lease.domain else ()) + lease.search
    return tuple(dict.fromkeys(domains))


def configure_lease(state: BootState, nic: Link, lease: Lease) -> None:
    if lease.mtu and lease.mtu != nic.mtu:
        state.system.do(SetLink(nic.ifindex, nic.name, lease.mtu))
    state.system.do(AddAddress(nic.ifindex, nic.name, lease.address, lease.prefix, lease.broadcast))
    routes = lease_routes(lease)
    _add_routes(state, nic, lease.address, lease.prefix, routes, RTPROT_DHCP)
    # A lease may leave these out (a network meant for something else); what then fails later (a server
    # name that does not resolve, a server out of reach) has its cause named in the report.
    if not any(route.prefix == 0 for route in routes):
        reached = [subnet(lease.address, lease.prefix)] + [f"{route.destination}/{route.prefix}" for route in routes]
        state.warn(f"network: the DHCP lease of {nic.name} names no router: only {', '.join(reached)} "
                   f"{'is' if len(reached) == 1 else 'are'} reachable")
    if not lease.dns:
        state.warn(f"network: the DHCP lease of {nic.name} names no DNS server: host names (of servers, proxies, NTP) "
                   "cannot be resolved")
    search = _search_domains(lease)
    if lease.dns or search:
        _write_resolv_conf(state, lease.dns, search)
    if lease.hostname:
        state.system.do(SetHostname(lease.hostname))
    state.facts["network"] = {
        "mode": "dhcp",
        "interface": nic.name,
        "address": f"{lease.address}/{lease.prefix}",
        "gateway": next((route.gateway for route in routes if route.prefix == 0), ""),
        "routes": [_route_text(route) for route in routes],
        "dns": list(lease.dns),
        "search": list(search),
        "mtu": lease.mtu or nic.mtu,
        "lease_time": lease.lease_time,
        "seconds_to_lease": round(lease.seconds, 3),
        "dhcp_server": lease.server_id,
        "hostname": lease.hostname,
        "ntp": list(lease.ntp),
    }
    state.log.info(f"network: {nic.name} {lease.address}/{lease.prefix} from DHCP server {lease.server_id} "
                   f"in {lease.seconds:.2f} s")  # fmt: skip


def _route_text(route: StaticRoute) -> str:
    target = "default" if route.prefix == 0 else f"{route.destination}/{route.prefix}"
    return f"{target} via {route.gateway}" if route.gateway else f"{target} on-link"


class StaticAssignment(NamedTuple):
    """Static settings for one NIC, from ``ucernvm.net=static:...`` or a context.sh."""

    nic: Link
    address: str  # "10.0.0.5/24"
    gateway: str = ""
    dns: tuple[str, ...] = ()
    mtu: int | None = None


def configure_static(state: BootState, source: str, assignments: list[StaticAssignment]) -> None:
    """Addresses, one default route (through the first IPv4 gateway: µCernVM sets eth0's only), MTUs
    and resolv.conf; the facts list every NIC, for the report and the OS's cloud-init seed."""
    gateway = ""
    dns: list[str] = []
    interfaces = []
    mtus = {nic.name: nic.mtu for nic, *_ in assignments}
    for nic, address, wanted_gateway, servers, mtu in assignments:
        host, _, prefix = address.partition("/")
        route = wanted_gateway if not gateway and "." in wanted_gateway else ""
        if mtu and mtu != mtus[nic.name]:
            state.system.do(SetLink(nic.ifindex, nic.name, mtu))
            mtus[nic.name] = mtu
        state.system.do(AddAddress(nic.ifindex, nic.name, host, int(prefix)))
        if route:
            _add_routes(state, nic, host, int(prefix), [StaticRoute("0.0.0.0", 0, route)], RTPROT_BOOT)
        gateway = gateway or route
        dns += servers
        interfaces.append({"name": nic.name, "mac": nic.mac, "address": address, "gateway": route,
                           "mtu": mtus[nic.name]})
    servers = tuple(dict.fromkeys(dns))
    if servers:
        _write_resolv_conf(state, servers, ())
    first = interfaces[0]
    state.facts["network"] = {
        "mode": "static",
        "source": source,
        "interface": first["name"],
        "address": first["address"],
        "gateway": gateway,
        "dns": list(servers),
        "mtu": first["mtu"],
        "interfaces": interfaces,
    }
    state.log.info(f"network: static from {source}: " + ", ".join(f"{i['name']} {i['address']}" for i in interfaces))


def configure_media_network(state: BootState, nics: list[Link], found: FoundContext) -> bool:
    """OpenNebula's static settings (context.sh's ETH<n>_*) on the NICs they name: by MAC when given,
    else eth<n> as the n-th NIC. False when none of them names a NIC here: then DHCP runs."""
    assignments = []
    for interface in found.network:
        nic = _nic_of(nics, interface)
        if nic is None:
            state.warn(f"context.sh on {found.device}: no NIC for {interface.name}"
                       + (f" with MAC {interface.mac}" if interface.mac else "") + ": its settings are ignored")
            continue
        assignments.append(StaticAssignment(nic, interface.address, interface.gateway, interface.dns, interface.mtu))
    if not assignments:
        return False
    configure_static(state, f"OpenNebula context.sh on {found.device}", assignments)
    return True


def _nic_of(nics: list[Link], interface: StaticInterface) -> Link | None:
    if interface.mac:
        return next((nic for nic in nics if nic.mac.lower() == interface.mac), None)
    number = int(interface.name.removeprefix("eth"))
    return nics[number] if number < len(nics) else None


def may_have_media_network(context_source: str) -> bool:
    """Whether ``ucernvm.context=`` lets an OpenNebula context.sh set the network: auto, or OpenNebula."""
    return context_source.strip().lower() in ("", "auto", OPEN_NEBULA.lower())


def host_report(rtnl: Rtnl, links: list[Link]) -> dict:
    """The host's network as it is (read-only): what a dry run shows instead of a lease."""
    names = {link.ifindex: link.name for link in links}
    routes = []
    for route in rtnl.routes():
        target = "default" if route.prefix == 0 else f"{route.destination}/{route.prefix}"
        via = f" via {route.gateway}" if route.gateway else ""
        routes.append(f"{target}{via} dev {names.get(route.ifindex, route.ifindex)}")
    dns, search = [], []
    try:
        with open("/etc/resolv.conf") as stream:  # the host's own file: a dry run's System root is a scratch dir
            for line in stream:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    dns.append(words[1])
                elif words and words[0] in ("search", "domain"):
                    search = words[1:]
    except OSError:
        pass
    return {
        "links": [{"name": link.name, "mac": link.mac, "up": link.up, "mtu": link.mtu} for link in links],
        "addresses": [f"{address.address}/{address.prefix} dev {names.get(address.ifindex, address.ifindex)}"
                      for address in rtnl.addresses()],
        "routes": routes,
        "dns": dns,
        "search": search,
    }  # fmt: skip


def network_stage(state: BootState) -> None:
    mode = str(state.config.network).strip()
    static = parse_static(mode) if mode.startswith("static:") else None
    if static is None and mode != "dhcp":
        raise ConfigError(f"network={mode!r} is neither dhcp nor static:...", STATIC_HINT)
    try:
        with Rtnl() as rtnl:
            links = rtnl.links()
            report = host_report(rtnl, links) if state.system.dry_run else None
    except OSError as error:
        raise NetworkError(f"cannot read the network links over netlink: {error.strerror or error}") from None
    nics = physical_nics(links)
    for link in links:
        if link.name == "lo" or link in nics:
            state.system.do(SetLink(link.ifindex, link.name))
    if not nics:
        raise NetworkError("no network interface found",
                           "the image may lack the driver module of the VM's NIC (virtio_net, e1000, ...)")  # fmt: skip
    if static is not None:
        assignment = StaticAssignment(nics[0], f"{static.address}/{static.prefix}", static.gateway, static.dns)
        configure_static(state, "ucernvm.net", [assignment])
        if report is not None:
            state.facts["network"]["host"] = report
        return
    if not state.system.dry_run and may_have_media_network(state.config.context_source):
        from ucernvm.boot.contextualize import media_network  # the context stage's code (0.2 s emulated)

        found = media_network(state)
        if found is not None and found.network and configure_media_network(state, nics, found):
            return
    interfaces = tuple(Interface(nic.name, nic.mac) for nic in nics)
    request = RequestLease(interfaces, float(state.config.network_timeout))
    lease = state.system.do(request)
    if report is not None:  # dry run: nothing was sent
        state.facts["network"] = {"mode": "dhcp", "would": request.describe(), **report}
        state.log.info(f"network: would {request.describe()}")
        return
    if lease is None:
        raise NetworkError(
            f"no DHCP lease on {', '.join(i.name for i in interfaces)} within {request.timeout:g} s",
            f"check that the VM's network has a DHCP server; raise ucernvm.net_timeout= or {STATIC_HINT}",
        )
    configure_lease(state, next(nic for nic in nics if nic.name == lease.interface), lease)
