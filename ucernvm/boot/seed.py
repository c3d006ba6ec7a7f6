"""What the OS gets from the context before it starts: cloud-init's NoCloud seed (with the static
network the loader set up, if any), the ``cernvm_inject`` and pickup tarballs, the extra user-data,
glideinWMS user-data for the OS's own ``/.ucernvm_bootstrap`` hook, which runs then, and the ``#<PIN>``
login hook. Each piece is best effort: a broken context never keeps the OS from booting, it leaves a
warning in the report."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import stat
from pathlib import Path

from ucernvm.boot.state import BootState
from ucernvm.boot.system import MakeDirs, Run, WriteFile
from ucernvm.boot.untrusted import UnusableFile, in_os_root, read_file, read_scratch
from ucernvm.context.found import PICKUP_LIMIT, MetaData
from ucernvm.context.login_hook import hook_files, install_login_hook
from ucernvm.context.userdata import MAX_USER_DATA, for_cloud_init
from ucernvm.cvmfs.hashing import sha256
from ucernvm.errors import UcernvmError
from ucernvm.records import NamedTuple

NOCLOUD_SEED = "var/lib/cloud/seed/nocloud"
CLOUD_CFG = "etc/cloud/cloud.cfg"  # then cloud.cfg.d/*.cfg, each over those before it
CLOUD_CFG_LIMIT = 1 << 20  # a distribution's is a few KB
SEED_META_LIMIT = 1 << 20  # the meta-data this loader writes: an id, a name and keys
BOOTSTRAP = ".ucernvm_bootstrap"
# Where µCernVM left glideinWMS user-data, in its own root: the OS hook starts the glidein pilot with it.
GLIDEINWMS_USER_DATA = "/glideinwms-user-data"
BUSYBOX = "/usr/bin/busybox"
PICKUP = "context/pickup.tar.gz"  # on the scratch disk, saved by the first boot
EXTRA_USER_DATA = "context/extra-user-data"
# µCernVM sourced the OS hook in its own shell, where these logging functions existed.
_HOOK_SHIMS = (
    'log_start() { printf "[INF] %s" "$*"; }; log_ok() { echo " ok"; }; log_fail() { echo " failed"; }; '
    'log_info() { echo "[INF] $*"; }; log_warn() { echo "[WRN] $*"; }; '
)


class ExtractTarball(NamedTuple):
    data: bytes
    target: str
    what: str

    def describe(self) -> str:
        return f"extract {self.what} ({len(self.data)} bytes) into {self.target}"

    def apply(self) -> list[str]:
        from ucernvm.tarfiles import tarfile  # only a context with tarballs needs it

        def within_the_target(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
            # "tar": absolute names land under the target, '..' and paths through links out of it are refused.
            # Its modes are the archive's, as µCernVM's tar extracted them as root: the user-data that brings
            # the tarball configures the machine as root anyway, and a sticky 1777 directory or a set-user-ID
            # program the filter would have cut to 0755 would not work.
            checked = tarfile.tar_filter(member, path)
            return checked if member.issym() or member.islnk() else checked.replace(mode=member.mode, deep=False)

        try:
            with tarfile.open(fileobj=io.BytesIO(self.data), mode="r:*") as archive:
                archive.extractall(self.target, filter=within_the_target)
                return archive.getnames()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise UcernvmError(f"{self.what} cannot be extracted: {error}") from None


def instance_id(state: BootState) -> str:
    """Stable across boots (cloud-init runs its per-instance modules once) and new with new user-data."""
    found = state.found_context
    if found is not None and found.meta.instance_id:
        return found.meta.instance_id
    return "ucernvm-" + sha256(state.user_data or b"").hexdigest()[:16]


def network_config(network: dict) -> bytes | None:
    """cloud-init's network configuration (version 2) for a static network the loader set up, so that an
    OS whose cloud-init configures the network keeps the addresses its root is served over; None for
    DHCP, which the OS does again itself. NICs keep their names (a NIC that is up cannot be renamed)
    and are matched by MAC. JSON is YAML: written with json, sparing the boot PyYAML's import."""
    if network.get("mode") != "static":
        return None
    ethernets: dict[str, dict] = {}
    for interface in network["interfaces"]:
        name = interface["name"]
        config = ethernets.setdefault(name, {"match": {"macaddress": interface["mac"]}, "set-name": name,
                                             "addresses": [], "mtu": interface["mtu"]})
        config["addresses"].append(interface["address"])
        if interface["gateway"]:
            config["routes"] = [{"to": "0.0.0.0/0", "via": interface["gateway"]}]
    if network["dns"]:
        ethernets[network["interface"]]["nameservers"] = {"addresses": network["dns"]}
    return (json.dumps({"version": 2, "ethernets": ethernets}, indent=1) + "\n").encode()


def cloud_config(root: Path) -> tuple[dict, list[str]]:
    """The OS's cloud-init configuration as cloud-init merges it: each cloud.cfg.d/*.cfg (in name order)
    over cloud.cfg and the files before it, mappings merged key by key; and what could not be read,
    which cloud-init leaves out too (a file that is not a YAML mapping counts as empty)."""
    config: dict = {}
    problems = []
    for relative in [CLOUD_CFG, *_cloud_cfg_d(root, problems)]:
        try:
            document = _yaml_file(root, relative)
        except ValueError as error:
            problems.append(str(error))
            continue
        if document is not None and not isinstance(document, dict):
            problems.append(f"/{relative} is not a YAML mapping")
        elif document:
            config = _merged(document, config)
    return config, problems


def _cloud_cfg_d(root: Path, problems: list[str]) -> list[str]:
    """The files of cloud.cfg.d that cloud-init reads: names ending in .cfg, in name order, that are files
    once their links are followed (a dangling link or a directory is left out, as cloud-init's isfile does)."""
    directory = f"{CLOUD_CFG}.d"
    try:
        where = os_path(root, directory)
        names = sorted(os.listdir(root / where)) if where is not None else []
    except ValueError as error:
        problems.append(str(error))
        return []
    except OSError:
        return []
    files = []
    for name in names:
        if not name.endswith(".cfg"):
            continue
        try:
            resolved = os_path(root, f"{directory}/{name}")
        except ValueError as error:
            problems.append(str(error))
            continue
        if resolved is not None and (root / resolved).is_file():  # a link-free path: nothing is followed
            files.append(f"{directory}/{name}")
    return files


MAX_LINKS = 40  # the kernel's limit on the links one path name follows


def os_path(root: Path, relative: str) -> str | None:
    """``relative`` with the OS's links followed as the OS follows them once it runs, an absolute target
    from the OS's root (here, in the loader, it would name the loader's file): the same file's path under
    ``root`` through no link, or None where it is not there. A ValueError where a link leads out of the
    root ('..' above it) or links loop."""
    done: list[str] = []
    todo = [part for part in relative.split("/") if part]
    followed = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if not done:
                raise ValueError(f"/{relative} is a symbolic link that leads out of the OS's root")
            done.pop()
            continue
        path = root.joinpath(*done, part)
        try:
            mode = path.lstat().st_mode
        except OSError:  # absent, or under something that is no directory
            if followed:
                raise ValueError(f"/{relative} leads through a symbolic link to /{'/'.join([*done, part, *todo])}, "
                                 "which the OS does not have") from None
            return None
        if not stat.S_ISLNK(mode):
            done.append(part)
            continue
        followed += 1
        if followed > MAX_LINKS:
            raise ValueError(f"/{relative} is a symbolic link that loops")
        try:
            target = os.readlink(path)
        except OSError as error:
            raise ValueError(f"/{relative}: {error.strerror}") from None
        if target.startswith("/"):
            done = []
        todo = [part for part in target.split("/") if part] + todo
    return "/".join(done)


def _yaml_file(root: Path, relative: str) -> object:
    """The document of a YAML file of the OS, its links followed as the OS follows them (cloud-init reads
    a linked cloud.cfg); a ValueError saying why there is none. The OS's root holds its writable layer: what
    the OS left there is read as the scratch disk's files are (untrusted.py)."""
    import yaml  # only the keys GCE names users for need it

    resolved = os_path(root, relative)
    try:
        data = None if resolved is None else read_file(root, resolved, CLOUD_CFG_LIMIT)
    except UnusableFile as problem:
        raise ValueError(f"/{problem}" if resolved == relative else f"/{relative}, a link: /{problem}") from None
    if data is None:
        raise ValueError(f"the OS has no /{relative}")
    try:
        return yaml.safe_load(data.decode())
    except UnicodeDecodeError:
        raise ValueError(f"/{relative} is not UTF-8 text") from None
    except (yaml.YAMLError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        mark = getattr(error, "problem_mark", None)
        raise ValueError(f"/{relative} is not YAML" + (f" (line {mark.line + 1})" if mark else "")) from None


def _merged(high: dict, low: dict) -> dict:
    """``high`` over ``low``: what both map to a mapping is merged, anything else is ``high``'s."""
    merged = dict(low)
    for key, value in high.items():
        below = low.get(key)
        merged[key] = _merged(value, below) if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def default_user(config: dict) -> str | None:
    """The default user's name as cloud-init makes it of its configuration: ``system_info:
    default_user:``, whose name the legacy top-level ``user:`` overrides; there is one only where
    ``users`` lists ``default`` (distributions' cloud.cfg do) or ``user:`` is given."""
    legacy = config.get("user") or {}
    legacy = {"name": legacy} if isinstance(legacy, str) else legacy if isinstance(legacy, dict) else {}
    system_info = config.get("system_info")
    distro = system_info.get("default_user") if isinstance(system_info, dict) else None
    user = {**(distro if isinstance(distro, dict) else {}), **legacy}
    if not user or not (legacy or _lists_default(config.get("users"))):
        return None
    name = user.get("name")
    return name if isinstance(name, str) and name else None


def _lists_default(users: object) -> bool:
    """Whether cloud-init's ``users`` lists the default user, in any form it reads: a list, a string of
    comma-separated names, or a mapping of names to true or to a user's settings."""
    if isinstance(users, dict):
        value = users.get("default")
        return isinstance(value, dict) or (isinstance(value, (int, float, str)) and _is_true(value))
    entries = [users] if isinstance(users, str) else users if isinstance(users, list) else []
    return any(_names_default(entry) for entry in entries)


def _names_default(entry: object) -> bool:
    """An entry of a ``users`` list: names split at commas (not stripped, as cloud-init's), a nested list
    of names, or a user's settings, whose ``name`` is ``default`` where it has none."""
    if isinstance(entry, str):
        return "default" in entry.strip().split(",")
    if isinstance(entry, dict):
        return entry.get("name", "default") == "default"
    return isinstance(entry, list) and "default" in entry


def _is_true(value: object) -> bool:
    """cloud-init's util.is_true."""
    return value is True or (not isinstance(value, bool) and str(value).lower().strip() in ("true", "1", "on", "yes"))


def os_default_user(root: Path) -> tuple[str | None, str]:
    """The OS's default user, or None and why there is none."""
    config, problems = cloud_config(root)
    name = default_user(config)
    return name, "" if name else "; ".join(problems) or "the OS's cloud-init configuration names no default user"


def default_user_keys(state: BootState, lines: tuple[str, ...], new_instance: bool) -> tuple[str, ...]:
    """The keys of GCE's ``user:key`` lines that cloud-init's GCE datasource gives the OS's default user:
    those for ``cloudinit`` and for the default user's name; with that name unknown, only the first.
    cloud-init drops the others silently; where it cannot know the name and the keys are about to be
    given (the seed's instance is new to it: cloud-init gives keys once an instance), a warning says so."""
    from ucernvm.context.metadata import GCE_KEY_USER, gce_keys_by_user  # only GCE's keys need it

    name, why = os_default_user(state.new_root)
    pairs = gce_keys_by_user(lines)
    keys = tuple(key for user, key in pairs if user in (GCE_KEY_USER, name))
    left_out = len(pairs) - len(keys)
    if left_out and name is None:
        message = (f"GCE ssh-keys: {left_out} for users other than {GCE_KEY_USER!r} left out, as the OS's default "
                   f"user is unknown ({why})")
        if new_instance:
            state.warn(message)
        else:
            state.log.info(f"{message} (a warning at this instance's first boot)")
    elif left_out:
        state.log.info(f"GCE ssh-keys: {left_out} for users other than {GCE_KEY_USER!r} and {name!r} (the OS's "
                       "default user) left out, as cloud-init leaves them")
    return keys


def seed_meta(state: BootState, new_instance: bool) -> MetaData:
    """The source's meta-data, GCE's keys picked for the OS's default user."""
    found = state.found_context
    meta = found.meta if found is not None else MetaData()
    if not meta.user_keys:
        return meta
    keys = default_user_keys(state, meta.user_keys, new_instance)
    return meta._replace(public_keys=meta.public_keys + keys, user_keys=())


def seeded_instance(seed: Path) -> str | None:
    """The instance-id of the seed an earlier boot wrote (the OS may have changed it: any garbage is None)."""
    try:
        data = read_file(seed, "meta-data", SEED_META_LIMIT)
        document = json.loads(data) if data else None
    except (UnusableFile, ValueError, RecursionError):
        return None
    value = document.get("instance-id") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def seed_cloud_init(state: BootState) -> None:
    network = network_config(state.facts.get("network", {}))
    if state.user_data is None and network is None:
        return
    seed = state.new_root / NOCLOUD_SEED
    if not in_os_root(state, seed, "the NoCloud seed for cloud-init"):
        return
    instance = instance_id(state)
    meta = {**seed_meta(state, seeded_instance(seed) != instance).as_nocloud(), "instance-id": instance}
    state.system.do(MakeDirs(str(seed)))
    state.system.do(WriteFile(str(seed / "user-data"), for_cloud_init(state.user_data or b""), 0o600))
    state.system.do(WriteFile(str(seed / "meta-data"), (json.dumps(meta, indent=1) + "\n").encode(), 0o600))
    if network is not None:
        state.system.do(WriteFile(str(seed / "network-config"), network, 0o600))
    state.facts.setdefault("handoff", {})["cloud_init_seed"] = meta["instance-id"]


def inject(state: BootState) -> None:
    """``cernvm_inject`` (base64 of a .tar.gz) and the pickup tarball, extracted into the root once."""
    marker = state.scratch / "context" / "injected"
    tarballs = []
    if state.config.inject and not marker.exists():
        try:
            tarballs.append(("cernvm_inject", base64.b64decode(state.config.inject, validate=True)))
        except (binascii.Error, ValueError):
            state.warn("cernvm_inject is not base64: ignored")
    pickup = None if marker.exists() else read_scratch(state, PICKUP, PICKUP_LIMIT, "not extracted")
    if pickup is not None:
        tarballs.append(("pickup.tar.gz", pickup))
    for what, data in tarballs:
        try:
            names = state.system.do(ExtractTarball(data, str(state.new_root), what))
            state.facts.setdefault("handoff", {})[what] = len(names or [])
        except UcernvmError as error:
            state.warn(error.message)
    if tarballs:
        state.system.do(WriteFile(str(marker), b""))


def extra_user_data(state: BootState) -> None:
    saved = read_scratch(state, EXTRA_USER_DATA, MAX_USER_DATA, "the OS gets no /cernvm/extra-user-data")
    target = state.new_root / "cernvm" / "extra-user-data"
    if saved is not None and in_os_root(state, target, "/cernvm/extra-user-data"):
        state.system.do(MakeDirs(str(target.parent)))
        state.system.do(WriteFile(str(target), saved, 0o600))


def glideinwms_user_data(state: BootState) -> None:
    """On the first boot, as µCernVM: later boots find the pilot the hook set up in the OS."""
    if state.scratch_fresh and state.user_data and state.facts.get("context", {}).get("glideinwms"):
        state.system.do(WriteFile(str(state.system.path(GLIDEINWMS_USER_DATA)), state.user_data, 0o600))


def run_bootstrap_hook(state: BootState) -> None:
    """The OS's ``/.ucernvm_bootstrap <root>``, run with the image's busybox shell as µCernVM did."""
    hook = state.new_root / BOOTSTRAP
    if not hook.is_file():
        return
    shell = state.system.path(BUSYBOX)
    script = f'{_HOOK_SHIMS}UCONTEXT_SRC="$1"; export UCONTEXT_SRC; . "$2" "$3"'
    argv = (str(shell), "sh", "-c", script, "sh", state.context_source, str(hook), str(state.new_root))
    try:
        result = state.system.do(Run(argv, timeout=120))
    except UcernvmError as error:
        state.warn(f"{BOOTSTRAP}: {error.message}")
        return
    if result is not None:
        for line in result.stdout.decode(errors="replace").splitlines()[-20:]:
            state.log.info(f"{BOOTSTRAP}: {line}")
    state.facts.setdefault("handoff", {})["bootstrap_hook"] = "ran"


def login_hook(state: BootState) -> None:
    if not (state.new_root / "etc" / "systemd").is_dir() and not state.system.dry_run:
        return  # the #PIN login hook is for systemd's gettys
    try:
        files = hook_files(state.config.service_url)
        # All or nothing: a getty's drop-in without the login program it names would leave no console login.
        if all(in_os_root(state, state.new_root / path, "the #PIN login hook") for path in files):
            install_login_hook(state.new_root, state.system, files)
    except UcernvmError as error:
        state.warn(f"the #PIN login hook was not installed: {error.message}")


def hand_over_context(state: BootState) -> None:
    for step in (seed_cloud_init, inject, extra_user_data, glideinwms_user_data, run_bootstrap_hook, login_hook):
        try:
            step(state)
        except Exception as error:  # even a bug here: the OS boots without that piece of its context
            import traceback  # only for a bug's report

            state.log.error(f"{step.__name__}: {traceback.format_exc()}")
            state.warn(f"{step.__name__} failed, the OS boots without it: {type(error).__name__}: {error}")
