"""Finding the user-data of a first boot: µCernVM's sources in µCernVM's order, under one deadline.

Local media come first (ConfigDrive, OpenNebula, vSphere, Azure, then NoCloud; the first source found
on any medium wins, media in device order, but of NoCloud media the last, as cloud-init takes it), then
the network: one parallel TCP probe of the metadata addresses (2 s at most), GCE, EC2 (IMDSv2 token
first) and OpenStack on the link-local address, CloudStack on 10.1.1.1 and on the DHCP server. Every
partition is also searched for ``/cernvm/extra-user-data`` and ``/cernvm/pickup.tar.gz``. The kernel
option ``ucernvm.context=`` names one source (no probing) or ``none``.

Usage at boot: ``find_user_data(SourceProbe(devices=..., mounter=SystemMounter(system), ...))``, or
``scan_media`` before the network comes up and ``ask_network`` after it.
Only the standard library and the project's own HTTP client are imported: this runs as PID 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ucernvm.boot.system import MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MakeDirs, Mount, System, Unmount
from ucernvm.context.found import (CLOUDSTACK, LOCAL_SOURCES, NETWORK_SOURCES, NOCLOUD, OPEN_NEBULA, BlockDevice,
                                   FoundContext)
from ucernvm.context.media import LAYOUTS, read_extras
from ucernvm.context.metadata import LINK_LOCAL_FETCHERS, Client, fetch_cloudstack, parse_host, reachable
from ucernvm.context.userdata import decode
from ucernvm.errors import UcernvmError
from ucernvm.records import NamedTuple

DEFAULT_BUDGET = 15.0  # seconds for everything, when the caller gives no deadline
PROBE_TIMEOUT = 2.0  # µCernVM's portprobe budget
REQUEST_TIMEOUT = 4.0
NOT_FILE_SYSTEMS = ("", "swap", "jbd")
# Mount options that keep a read-only look from writing: no journal replay on a foreign disk.
READ_ONLY_OPTIONS = {"ext3": "noload", "ext4": "noload", "xfs": "norecovery"}

__all__ = ["BlockDevice", "FoundContext", "MetadataAddresses", "Mounter", "SourceProbe", "SystemMounter",
           "ask_network", "find_static_network", "find_user_data", "scan_media", "source_names"]


class Mounter(Protocol):
    def mount(self, device: BlockDevice) -> Path:
        """Mount ``device`` read-only and return where; raise ``UcernvmError`` when it cannot."""
        ...

    def unmount(self, path: Path) -> None: ...


class SystemMounter:
    """Mounts each medium in turn at one directory through the boot's System (a dry run records the
    mounts and finds the directory empty)."""

    def __init__(self, system: System, directory: str = "/run/ucernvm/media") -> None:
        self.system = system
        self.directory = system.path(directory)

    def mount(self, device: BlockDevice) -> Path:
        self.system.do(MakeDirs(str(self.directory)))
        self.system.do(Mount(device.path, str(self.directory), device.fstype, READ_ONLY_OPTIONS.get(device.fstype, ""),
                             MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
        return self.directory

    def unmount(self, path: Path) -> None:
        self.system.do(Unmount(str(path)))


class MetadataAddresses(NamedTuple):
    """Where the metadata services are (``host:port``); tests point them at 127.0.0.1."""

    link_local: str = "169.254.169.254:80"  # GCE, EC2, OpenStack
    cloudstack: str = "10.1.1.1:80"
    dhcp_port: int = 80  # CloudStack's virtual router is also the DHCP server


def _ignore(message: str) -> None:
    pass


class _ProbeFields(NamedTuple):
    requested: str = "auto"
    devices: Sequence[BlockDevice] = ()
    mounter: Mounter | None = None
    deadline: float | None = None
    # The network, which may still be coming up: called before the first request to a metadata service,
    # waits for it and answers the DHCP server's address, if any (CloudStack's router); the wait is not
    # counted in the deadline.
    network: Callable[[], str | None] | None = None
    addresses: MetadataAddresses = MetadataAddresses()
    probe_timeout: float = PROBE_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    log: Callable[[str], None] = _ignore  # what was tried
    warn: Callable[[str], None] = _ignore  # what was wrong with a source (recorded in the boot report)


class SourceProbe(_ProbeFields):
    """What a search needs. ``requested`` is the kernel option ``ucernvm.context=``: ``auto``, ``none``
    or a source name (any case). ``deadline`` is a ``time.monotonic()`` value for the whole search."""

    __slots__ = ()

    # A named tuple cannot define __new__ itself, hence the base class: an unknown name is reported
    # when a probe is made, also by _replace (which builds through _make).
    def __new__(cls, *args: Any, **kwargs: Any) -> SourceProbe:
        probe = super().__new__(cls, *args, **kwargs)
        wanted = probe.requested.strip().lower()
        if wanted not in ("", "auto", "none") and wanted not in (name.lower() for name in source_names()):
            probe.warn(f"ucernvm.context={probe.requested} is not a source ({', '.join(source_names())}, auto or "
                       "none): trying all of them")
        return probe

    @classmethod
    def _make(cls, iterable: Iterable[Any]) -> SourceProbe:
        return cls(*iterable)


def source_names() -> tuple[str, ...]:
    return (*LOCAL_SOURCES, *NETWORK_SOURCES)


def _requested(probe: SourceProbe) -> tuple[str, ...]:
    """The sources to try, in order (an unknown name was reported when the probe was made)."""
    wanted = probe.requested.strip().lower()
    if wanted == "none":
        return ()
    named = tuple(name for name in source_names() if name.lower() == wanted)
    return named or source_names()


def find_user_data(probe: SourceProbe) -> FoundContext | None:
    """The first source's user-data (gunzipped) and meta-data, with the extras of every partition; None
    when there is neither. Never raises for what a medium or a server holds: problems go to ``warn``."""
    return ask_network(probe, scan_media(probe))


def scan_media(probe: SourceProbe) -> FoundContext | None:
    """The local sources and every partition's extras, without the network: usable before the network
    is up (OpenNebula's context.sh carries static addresses). ``source`` is None when only extras were found."""
    found, extra, pickup = _scan_media(probe, [name for name in _requested(probe) if name in LAYOUTS])
    if found is None and not extra and pickup is None:
        return None
    found = found or FoundContext(None)
    return found._replace(user_data=decode(found.user_data), extra_user_data=extra, pickup=pickup)


def find_static_network(probe: SourceProbe) -> FoundContext | None:
    """The first OpenNebula context.sh on a CD or vfat medium, for its static NIC settings: read by the
    network stage before any DHCP, as µCernVM's one_network. Only media that can hold one are mounted."""
    if OPEN_NEBULA not in _requested(probe):
        return None
    found, _, _ = _scan_media(probe, [OPEN_NEBULA], extras=False)
    return found


def ask_network(probe: SourceProbe, local: FoundContext | None) -> FoundContext | None:
    """``local`` when it has a source; else the metadata services' answer, with ``local``'s extras."""
    wanted = _requested(probe)
    if (local is not None and local.source is not None) or not any(name in NETWORK_SOURCES for name in wanted):
        return local
    deadline = probe.deadline if probe.deadline is not None else time.monotonic() + DEFAULT_BUDGET
    dhcp_server = None
    if probe.network is not None:
        started = time.monotonic()
        dhcp_server = probe.network()
        deadline += time.monotonic() - started
    found = _ask_network(probe, wanted, deadline, dhcp_server)
    if found is None:
        return local
    extras = local or FoundContext(None)
    return found._replace(user_data=decode(found.user_data), extra_user_data=extras.extra_user_data,
                          pickup=extras.pickup)


def _scan_media(probe: SourceProbe, layouts: list[str], extras: bool = True,
                ) -> tuple[FoundContext | None, bytes, bytes | None]:
    """Mount every partition once: the layouts it may hold, and its extras (without ``extras``, only the
    partitions that may hold one of the layouts)."""
    by_source: dict[str, FoundContext] = {}
    extra_parts: list[bytes] = []
    pickup: bytes | None = None
    if probe.mounter is None:
        return None, b"", None
    layout_types = {fstype for name in layouts for fstype in LAYOUTS[name][0]}
    for device in sorted(probe.devices, key=lambda device: device.path):
        if device.fstype in NOT_FILE_SYSTEMS or not (extras or device.fstype in layout_types):
            continue
        try:
            root = probe.mounter.mount(device)
        except UcernvmError as error:
            # Only a medium that could hold a context is worth a warning; any partition is mounted for extras.
            report = probe.warn if device.fstype in layout_types else probe.log
            report(f"cannot look at {device.path} ({device.fstype}): {error}")
            continue
        try:
            for name in layouts:
                types, read = LAYOUTS[name]
                # cloud-init takes the last of several NoCloud media (it sorts them in reverse), as the OS's will.
                if (name not in by_source or name == NOCLOUD) and device.fstype in types:
                    result = read(root, device, _about(probe.warn, device))
                    if result is not None:
                        probe.log(f"{name} user-data on {device.path}")
                        by_source[name] = result
            if not extras:
                continue
            extra, found_pickup = read_extras(root, _about(probe.warn, device))
            if extra:
                probe.log(f"extra user-data on {device.path}")
                extra_parts.append(extra if extra.endswith(b"\n") else extra + b"\n")
            if pickup is None and found_pickup is not None:
                probe.log(f"pickup.tar.gz on {device.path}")
                pickup = found_pickup
        finally:
            try:
                probe.mounter.unmount(root)
            except UcernvmError as error:
                probe.warn(f"cannot unmount {device.path}: {error}")
    found = next((by_source[name] for name in layouts if name in by_source), None)
    return found, b"".join(extra_parts), pickup


def _about(warn: Callable[[str], None], device: BlockDevice) -> Callable[[str], None]:
    return lambda message: warn(f"{device.path}: {message}")


def _ask_network(probe: SourceProbe, wanted: tuple[str, ...], deadline: float, dhcp_server: str | None,
                 ) -> FoundContext | None:
    addresses = probe.addresses
    try:
        link_local = parse_host(addresses.link_local)
        routers = [parse_host(addresses.cloudstack)]
        if dhcp_server:
            routers.append(parse_host(dhcp_server, addresses.dhcp_port))
    except ValueError as error:
        probe.warn(f"metadata address: {error}")
        return None
    hosts = [link_local, *routers]
    if len(wanted) > 1:
        start = time.monotonic()
        up = reachable(hosts, max(0.0, min(probe.probe_timeout, deadline - start)))
        probe.log(f"metadata hosts reachable: {', '.join(f'{h}:{p}' for h, p in up) or 'none'} "
                  f"({time.monotonic() - start:.2f} s)")
    else:
        up = set(hosts)  # a named source is asked directly
    plan = [(link_local, name, fetch) for name, fetch in LINK_LOCAL_FETCHERS]
    plan += [(router, CLOUDSTACK, fetch_cloudstack) for router in dict.fromkeys(routers)]
    clients: dict[tuple[str, int], Client] = {}
    unanswered: list[str] = []  # what the deadline cut short or left unasked: a slow service's context is lost
    try:
        for host, name, fetch in plan:
            if name not in wanted or host not in up:
                continue
            if time.monotonic() >= deadline:
                unanswered.append(f"{name} at {host[0]}:{host[1]}")
                continue
            client = clients.setdefault(host, Client(host, deadline, probe.request_timeout, probe.log, probe.warn))
            result = fetch(client)
            if result is not None:
                probe.log(f"{name} user-data from {host[0]}:{host[1]} ({len(result.user_data)} bytes)")
                return result
            if time.monotonic() >= deadline:
                unanswered.append(f"{name} at {host[0]}:{host[1]}")
    finally:
        for client in clients.values():
            client.close()
    if unanswered:
        probe.warn(f"the search for user-data ran out of time before {', '.join(unanswered)} answered in full: "
                   "the first boot goes on without a context from them")
    return None
