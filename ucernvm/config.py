"""BootConfig: every knob of the boot loader, written once in ``SETTINGS``.

Each ``Setting`` names its kernel command-line spellings, its ``[ucernvm-begin]`` spelling, its type,
default and help. The kernel command-line parser, the context parser, validation, ``--help`` texts and
the options table in docs/options.md all come from this table. Precedence (as µCernVM): defaults <
kernel command line < context; a snapshot pinned on the scratch disk overrides the tag later.
"""

from __future__ import annotations

import shlex
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

from ucernvm.context.defaults import SERVICE_URL
from ucernvm.errors import ConfigError
from ucernvm.records import NamedTuple

_TRUE = {"1", "yes", "on", "true"}
_FALSE = {"0", "no", "off", "false"}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value == "":  # a bare flag (`cvmdebug`) means on
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use yes/no, on/off, true/false, 1/0)")


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0  # not a number: the warning names the value, not float()'s message
    if value < 0 or value != value:
        raise ValueError(f"{text!r} is not a duration in seconds")
    return value


def parse_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{text!r} is not a count")
    return value


def parse_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return parse


class Setting(NamedTuple):
    name: str
    default: Any
    help: str
    kernel: tuple[str, ...] = ()
    context: tuple[str, ...] = ()
    parse: Callable[[str], Any] = str

    @property
    def type_name(self) -> str:
        if self.parse is parse_bool:
            return "bool"
        if self.parse is parse_seconds:
            return "seconds"
        if self.parse is parse_count:
            return "count"
        return "text" if self.parse is str else "choice"


DEFAULT_SERVERS = (
    "cvmfs-stratum-one.cern.ch,cvmfs-s1fnal.opensciencegrid.org,cvmfs-s1bnl.opensciencegrid.org,grid-cvmfs-one.desy.de"
)
# µCernVM's PAC files: the site's own WPAD names, then CERN's and FNAL's WPAD services, which name the squid
# of a site they know by the client's address (DIRECT for others) and are asked in random order to share load
SITE_PAC_URLS = ("http://grid-wpad/wpad.dat", "http://wpad/wpad.dat")
SHARED_PAC_URLS = ("http://cernvm-wpad.cern.ch/wpad.dat", "http://cernvm-wpad.fnal.gov/wpad.dat")
DEFAULT_PAC_URLS = ";".join(SITE_PAC_URLS + SHARED_PAC_URLS)
PANIC_ACTIONS = ("shell", "poweroff", "reboot")
CVMSSH_WAIT = 30.0  # seconds the console offers cvmssh's shell (nobody may be there on a cloud)

SETTINGS: tuple[Setting, ...] = (
    Setting("repository", "cernvm-prod.cern.ch", "repository (FQRN) that holds the operating system",
            kernel=("cvmfs_repos",), context=("cvmfs_branch",)),
    Setting("servers", DEFAULT_SERVERS, "Stratum 1 host names (',' or ';' separated), each served as "
            "http://<host>/cvmfs/<repository>", kernel=("cvmfs_server",), context=("cvmfs_server",)),
    Setting("cdn", "NONE", "CDN host names that replace the servers, or NONE", kernel=("cvmfs_cdn",), context=("cvmfs_cdn",)),
    Setting("server_url", "", "full CVMFS_SERVER_URL (';' separated URLs); overrides servers and cdn",
            kernel=("cvmfs_url",)),
    Setting("proxy", "auto;DIRECT", "CVMFS_HTTP_PROXY: proxy groups ';', members '|', DIRECT, auto (PAC)",
            kernel=("cvmfs_proxy",), context=("cvmfs_http_proxy",)),
    Setting("pac_urls", DEFAULT_PAC_URLS, "CVMFS_PAC_URLS: PAC files that resolve the proxy 'auto' (the default's "
            "cernvm-wpad services asked in random order)",
            kernel=("cvmfs_pac_urls",), context=("cvmfs_pac_urls",)),
    Setting("tag", "", "named snapshot to boot (empty: the newest revision)",
            kernel=("cvmfs_repository_tag",), context=("cvmfs_tag",)),
    # cvmfs_path: the public contexts' spelling, which µCernVM passed over (cernvm_path wins where both are).
    Setting("os_path", "", "directory of the repository that is the OS root", kernel=("cernvm_path",),
            context=("cernvm_path", "cvmfs_path")),
    Setting("xattrs", "auto", "extended attributes on the snapshot's mount: on, off, or auto (on when the snapshot "
            "stores some); off spares a FUSE request at every lookup and exec, and hides the user.* attributes",
            kernel=("ucernvm.xattrs",), parse=parse_choice(("auto", "on", "off"))),
    Setting("prefetch", True, "download the files of the snapshot's prefetch list (<cernvm_path>/.ucernvm_prefetch) "
            "ahead, in the background, while the OS boots", kernel=("ucernvm.prefetch",), parse=parse_bool),
    Setting("boot_layer", True, "once the prefetch list was fetched, copy its files out of the cache into a layer on the "
            "scratch disk that later boots of the snapshot read without the FUSE daemon (a snapshot without xattrs)",
            kernel=("ucernvm.boot_layer",), parse=parse_bool),
    Setting("wait_on_squid", 0.0, "seconds to wait, at most, for a proxy (not DIRECT) to answer before mounting, "
            "probing each proxy in turn; then the boot goes on with a warning, failing over as the proxy list says "
            "(µCernVM's number was the time of each probe, and it waited forever); DIRECT alone: no wait",
            context=("cvmfs_wait_on_squid",), kernel=("ucernvm.wait_on_squid",), parse=parse_seconds),
    Setting("resize_rootfs", True, "on: the scratch partition takes the whole empty disk; off: the first 20 GiB",
            context=("resize_rootfs",), parse=parse_bool),
    Setting("use_boothd", False, "put the scratch partition on the boot disk, not on an empty disk",
            context=("use_boothd",), parse=parse_bool),
    Setting("inject", "", "base64 of a .tar.gz extracted into the root once", context=("cernvm_inject",)),
    Setting("glideinwms", True, "detect glideinWMS user-data", context=("useglideinwms",), parse=parse_bool),
    Setting("cluster_pin", "", "CernVM Online cluster pairing PIN", context=("cvm_cluster_pin",)),
    Setting("cluster_master", False, "this VM is the cluster master", context=("cvm_cluster_master",), parse=parse_bool),
    Setting("service_url", SERVICE_URL, "CernVM Online service URL",
            kernel=("ucernvm.service_url",), context=("cvm_service_url",)),
    Setting("cluster_tries", 50, "how often a cluster member asks the service before giving up",
            kernel=("ucernvm.cluster_tries",), parse=parse_count),
    Setting("cluster_delay", 25.0, "seconds between the cluster pairing attempts (plus up to 9 s of jitter)",
            kernel=("ucernvm.cluster_delay",), parse=parse_seconds),
    Setting("online_pin", "", "CernVM Online PIN: its context is the user-data of the first boot",
            kernel=("ucernvm.pin",), context=("cvm_online_pin",)),
    Setting("online_secret", "", "the secret of an encrypted CernVM Online context (PIN ending in an odd digit)",
            kernel=("ucernvm.pin_secret",), context=("cvm_online_secret",)),
    Setting("debug", False, "open a rescue shell just before switching root (the boot goes on when it exits); its "
            "reset_root_password sets the OS's root password to 'password', as µCernVM's", kernel=("cvmdebug",),
            parse=parse_bool),
    Setting("ssh", False, "µCernVM started an SSH server (dropbear, empty root password) in the foreground, holding the "
            "boot until it stopped; no SSH server is shipped here: before switching root the console offers the rescue "
            f"shell for {CVMSSH_WAIT:g} s (press Enter), then the boot goes on with a warning, so a console nobody "
            "watches (a cloud's) does not hold it up", kernel=("cvmssh",), parse=parse_bool),
    Setting("panic", "shell", "what a failed boot does after the failure screen: shell, poweroff or reboot",
            kernel=("ucernvm.panic",), parse=parse_choice(PANIC_ACTIONS)),
    Setting("break_stage", "", "open a rescue shell before this stage", kernel=("ucernvm.break",)),
    Setting("context_source", "auto", "user-data source to use without probing (auto: probe in order; none)",
            kernel=("ucernvm.context",)),
    Setting("metadata", "169.254.169.254:80", "address of the GCE/EC2/OpenStack metadata service (IPv6 in brackets: "
            "[fd00:ec2::254]:80)",
            kernel=("ucernvm.metadata",)),
    Setting("network", "dhcp", "dhcp (unless an OpenNebula context.sh on a CD gives static addresses), or "
            "static: <address>/<prefix>,<gateway>[,<dns>...] for the first NIC",
            kernel=("ucernvm.net",)),
    Setting("network_timeout", 20.0, "seconds to wait for a DHCP lease", kernel=("ucernvm.net_timeout",), parse=parse_seconds),
    Setting("ntp", "pool.ntp.org", "NTP servers (host[:port], ',' separated) that set the clock before any date is "
            "checked (certificates, the whitelist's expiry), asked together with those the DHCP lease names (option 42); "
            "without an answer, a clock more than a minute behind the first server's HTTP Date is moved forward to "
            "it; off: leave the clock as it is (and ask no server)", kernel=("ucernvm.ntp",)),
    Setting("ntp_timeout", 2.0, "seconds to wait for an NTP answer (the boot goes on without one)",
            kernel=("ucernvm.ntp_timeout",), parse=parse_seconds),
    Setting("scratch_label", "UROOT", "file system label of the scratch disk", kernel=("ucernvm.scratch_label",)),
)  # fmt: skip

# A named tuple: PID 1 imports this module, and a frozen dataclass of this many fields costs ~5 ms to
# define natively (it compiles its methods), over 0.1 s under emulation.
BootConfig = namedtuple("BootConfig", [setting.name for setting in SETTINGS],
                        defaults=[setting.default for setting in SETTINGS])
BootConfig.__doc__ = "Every knob of a boot, with its value (see ``SETTINGS``)."

_BY_KERNEL = {spelling: setting for setting in SETTINGS for spelling in setting.kernel}
_BY_CONTEXT = {spelling.lower(): setting for setting in SETTINGS for spelling in setting.context}


def split_cmdline(cmdline: str) -> list[str]:
    """Words of a kernel command line; double quotes group a value with spaces or ';' (as the kernel does)."""
    try:
        return shlex.split(cmdline, posix=True)
    except ValueError:
        return cmdline.split()


def kernel_values(cmdline: str) -> dict[str, str]:
    """The knobs set on a kernel command line, by setting name.

    Words the boot loader does not know belong to the kernel or the OS and are ignored.
    """
    values: dict[str, str] = {}
    for word in split_cmdline(cmdline):
        key, equals, value = word.partition("=")
        setting = _BY_KERNEL.get(key)
        if setting is not None:
            values[setting.name] = value if equals else ""
    return values


def context_values(section: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The knobs set in a ``[ucernvm-begin]`` section; unknown keys are reported, not fatal."""
    values: dict[str, str] = {}
    warnings = []
    for key, value in section.items():
        setting = _BY_CONTEXT.get(key.lower())
        if setting is None:
            warnings.append(f"unknown [ucernvm] key {key!r} ignored")
        elif key.lower() == setting.context[0] or setting.name not in values:  # an alias never overrides
            values[setting.name] = value
    # As µCernVM: contextualizing the proxy or the servers turns the CDN off, unless it is named too.
    if ("proxy" in values or "servers" in values) and "cdn" not in values:
        values["cdn"] = "NONE"
    return values, warnings


def build_config(*layers: Mapping[str, str], base: Any = None) -> tuple[Any, list[str]]:
    """Apply layers of raw values (lowest precedence first); a value that does not parse keeps the
    previous one and becomes a warning, so a typo never bricks a boot."""
    settings = {setting.name: setting for setting in SETTINGS}
    current = base._asdict() if base is not None else {}
    warnings: list[str] = []
    for layer in layers:
        for name, raw in layer.items():
            setting = settings[name]
            try:
                current[name] = setting.parse(raw)
            except ValueError as error:
                spelling = (setting.kernel + setting.context)[0]
                warnings.append(f"{spelling}: {error}; keeping {current.get(name, setting.default)!r}")
    return BootConfig(**current), warnings


def server_urls(config: Any) -> list[str]:
    """CVMFS_SERVER_URL as µCernVM builds it: cvmfs_url, else the CDN, else the servers.

    Host lists accept both ',' and ';' (the original split only on ',', mangling mixed lists).
    """
    if config.server_url:
        return [url.strip() for url in config.server_url.split(";") if url.strip()]
    hosts = config.cdn if config.cdn and config.cdn.upper() != "NONE" else config.servers
    names = [host.strip() for host in hosts.replace(";", ",").split(",") if host.strip()]
    return [name if "://" in name else f"http://{name}/cvmfs/{config.repository}" for name in names]


def validate(config: Any) -> None:
    """Errors that make a boot impossible, whatever the network does."""
    if not config.repository:
        raise ConfigError("no repository is configured", "set cvmfs_repos= on the kernel command line")
    if not server_urls(config):
        raise ConfigError("no server is configured", "set cvmfs_server= or cvmfs_url= on the kernel command line")
    if ".." in config.os_path.split("/"):
        raise ConfigError(f"cernvm_path {config.os_path!r} must not contain '..'")


def options_table() -> str:
    """The Markdown table of every setting (docs/options.md is this, and `ucernvm options` prints it)."""
    lines = [
        "| setting | kernel command line | `[ucernvm-begin]` key | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        kernel = ", ".join(f"`{name}=`" for name in setting.kernel) or "-"
        context = ", ".join(f"`{name}`" for name in setting.context) or "-"
        default = setting.default if setting.default != "" else "(empty)"
        lines.append(f"| {setting.name} | {kernel} | {context} | {setting.type_name} | `{default}` | {setting.help} |")
    return "\n".join(lines) + "\n"


def pac_url_list(value: str) -> tuple[str, ...]:
    """The PAC files of a ``pac_urls`` setting in the order to ask them: as given, but the default's shared
    WPAD services shuffled, as µCernVM shuffles them."""
    if value != DEFAULT_PAC_URLS:
        return tuple(url for url in value.split(";") if url)
    import random  # the boot's proxy code has it loaded already

    return SITE_PAC_URLS + tuple(random.sample(SHARED_PAC_URLS, len(SHARED_PAC_URLS)))
