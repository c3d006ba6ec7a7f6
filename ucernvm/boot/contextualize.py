"""The ``context`` stage: user-data from the first source that has it, its ucernvm section applied.

As µCernVM: on the first boot (no scratch file system yet) the user-data is looked for — local media
before metadata services, one overall deadline — and saved in the new scratch disk's ``context/``; later
boots use that saved copy. A CernVM Online PIN fetches the context from the service; a cluster PIN pairs
masters and workers; glideinWMS user-data implies proxy settings; ``/cernvm/extra-user-data`` on any
partition overrides. A missing or broken context never stops a boot: it becomes a warning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ucernvm.boot import blockdev
from ucernvm.boot.kmod import load_media_modules
from ucernvm.boot.pipeline import wait_for_background
from ucernvm.boot.state import BootState
from ucernvm.boot.system import Action, CopyMedium, MakeDirs, WriteFile
from ucernvm.boot.untrusted import read_scratch
from ucernvm.config import build_config, context_values
from ucernvm.context.section import parse_section
from ucernvm.context.found import AZURE, OPEN_NEBULA, BlockDevice, FoundContext, MetaData
from ucernvm.context.userdata import MAX_USER_DATA, decode, is_packed, text_parts
from ucernvm.errors import ContextError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ucernvm.context.sources import Mounter

SEARCH_SECONDS = 10.0  # every source together; a VM without a context loses under 3 s of it
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # the byte order marks a UTF-16 file starts with
META_DATA = "meta-data"  # in context/: the first boot's meta-data (NoCloud keys, GCE's user-keys), for later boots
# In context/: the user-data a CernVM Online context replaced; its settings (say, the proxy it came with)
# apply under the online context's on every boot, as on the first.
BEFORE_PIN = "user-data-before-pin"
SOURCE_LIMIT = 4096  # context/source: a source's name
AZURE_ISO = "azure.iso"  # in context/: µCernVM's dd of Azure's provisioning medium
# Azure's medium holds ovf-env.xml, whose CustomData is at most 64 KB, and a tag file: far below this. A
# larger medium with the tag is not Azure's, and its copy (read whole into PID 1's memory, then onto the
# scratch disk, outside the cache's quota) would only take room from the OS.
AZURE_ISO_LIMIT = 16 << 20


def section_of(user_data: bytes) -> tuple[dict[str, str], list[str]]:
    """The first ucernvm section in the user-data or any of its MIME parts."""
    for text in text_parts(user_data):
        section, warnings = parse_section(text)
        if section or warnings:
            return section, warnings
    return {}, []


def apply_section(state: BootState, section: dict[str, str], origin: str) -> None:
    values, warnings = context_values(section)
    state.config, invalid = build_config(values, base=state.config)
    for warning in warnings + invalid:
        state.warn(f"{origin}: {warning}")


def apply_user_data(state: BootState, user_data: bytes, source: str) -> None:
    """Make ``user_data`` this boot's user-data and read its ucernvm section (context over kernel)."""
    state.user_data = decode(user_data)
    state.context_source = source
    if is_packed(state.user_data):
        state.warn(f"the user-data from {source} is gzip that cannot be unpacked (truncated, damaged, or over "
                   f"{MAX_USER_DATA >> 20} MB unpacked): its [ucernvm-begin] settings are not read")
    elif state.user_data[:2] in UTF16_MARKS:
        state.warn(f"the user-data from {source} is UTF-16 text (as Windows PowerShell's '>' writes it), which "
                   "neither this boot loader nor cloud-init reads: save it as UTF-8")
    section, warnings = section_of(state.user_data)
    for warning in warnings:
        state.warn(warning)
    implied = _glideinwms_settings(state, state.user_data)
    if implied:
        state.log.info(f"glideinWMS user-data: {', '.join(sorted(implied))} from it")
        section = {**implied, **section}
    apply_section(state, section, source)
    state.facts["context"] = {"source": source, "bytes": len(state.user_data), "ucernvm_keys": sorted(section),
                              "glideinwms": bool(implied)}
    state.log.info(f"context from {source}: {len(state.user_data)} bytes, ucernvm keys: {', '.join(sorted(section)) or 'none'}")


def _glideinwms_settings(state: BootState, user_data: bytes) -> dict[str, str]:
    """The settings glideinWMS user-data implies (µCernVM's glideinwms_detect), unless useglideinWMS=off."""
    if not state.config.glideinwms:
        return {}
    from ucernvm.context import glideinwms  # only boots with user-data pay for its patterns

    return glideinwms.detect(user_data) or {}


def apply_extra_user_data(state: BootState, extra: bytes) -> None:
    """The extra user-data's ucernvm section, over the user-data's."""
    section, _ = section_of(decode(extra))
    apply_section(state, section, "extra user-data")


def local_media(state: BootState) -> list[BlockDevice]:
    """Every disk and partition with a recognisable file system (read-only probing, no mounts), probed
    once: the network stage (OpenNebula's context.sh) and the context stage both look at them."""
    if state.media is None:
        state.media = []
        for disk in blockdev.list_disks():
            for name, dev in [(disk.name, disk.dev), *((part.name, part.dev) for part in disk.partitions)]:
                node = blockdev.device_node(state.system, name, dev)
                try:
                    found = blockdev.probe_path(node)
                except OSError:
                    continue
                if found is not None:
                    state.media.append(BlockDevice(node, found.type, found.label))
    return state.media


class MediaMounter:
    """Mounts as *inner* (a context.sources.Mounter) does, the medium's file system modules loaded first."""

    def __init__(self, state: BootState, inner: Mounter, modules: str = "/lib/modules", sysfs: str = "/sys") -> None:
        self.state, self.inner, self.modules, self.sysfs = state, inner, modules, sysfs

    def mount(self, device: BlockDevice) -> Path:
        load_media_modules(self.state, device.fstype, self.modules, self.sysfs)
        return self.inner.mount(device)

    def unmount(self, path: Path) -> None:
        self.inner.unmount(path)


def media_network(state: BootState) -> FoundContext | None:
    """An OpenNebula context.sh on a local medium, for the network stage (µCernVM's one_network) where
    ``ucernvm.context=`` allows one (network.may_have_media_network). Its own mount point: the context
    stage may be searching the same media at the same time (background.py)."""
    from ucernvm.context.sources import SourceProbe, SystemMounter, find_static_network

    mounter = MediaMounter(state, SystemMounter(state.system, "/run/ucernvm/network-media"))
    probe = SourceProbe(requested=OPEN_NEBULA, devices=local_media(state), mounter=mounter, log=state.log.info,
                        warn=state.warn)
    return find_static_network(probe)


def context_stage(state: BootState) -> None:
    config = state.config
    if state.user_data is not None:  # given up front (ucernvm --dry-run --user-data FILE)
        apply_user_data(state, state.user_data, state.context_source)
        return
    media = local_media(state) if not state.system.dry_run else []
    if any(medium.label == config.scratch_label for medium in media):
        state.facts["context"] = {"source": "(saved on the first boot)"}
        state.log.info(f"{config.scratch_label} exists: the context saved on the first boot applies")
        return
    # Only a first boot searches: later ones (above) do without the search's code and its imports.
    from ucernvm.context.sources import MetadataAddresses, SourceProbe, SystemMounter, find_user_data

    def network() -> str | None:  # the network stage may still run (background.py)
        wait_for_background(state)
        return state.facts.get("network", {}).get("dhcp_server")

    probe = SourceProbe(
        requested=config.context_source,
        devices=media,
        mounter=MediaMounter(state, SystemMounter(state.system)),
        network=network,
        addresses=MetadataAddresses(link_local=config.metadata),
        deadline=time.monotonic() + SEARCH_SECONDS,
        log=state.log.info,
        warn=state.warn,
    )
    found = find_user_data(probe)
    state.found_context = found
    if found is not None and found.source is not None:
        apply_user_data(state, found.user_data, found.source_name)
    if found is not None and found.extra_user_data:
        apply_extra_user_data(state, found.extra_user_data)
    if state.config.online_pin:
        wait_for_background(state)
        online_context(state)
    if state.config.cluster_pin and state.user_data is not None:
        wait_for_background(state)
        from ucernvm.context.cluster import Retry, pair_cluster  # only cluster members pay for it

        pair = pair_cluster(
            state.user_data,
            state.config.cluster_pin,
            state.config.cluster_master,
            state.config.service_url,
            retry=Retry(tries=state.config.cluster_tries, delay=state.config.cluster_delay),
            cafile=CA_BUNDLE,
            log=state.log.info,
        )
        if pair.warning:
            state.warn(pair.warning)
        state.user_data = pair.user_data
        state.facts.setdefault("context", {})["cluster_master_ip"] = pair.master_ip
    if state.user_data is None:
        state.facts["context"] = {"source": "(none)"}
        state.log.info("no user-data")


def online_context(state: BootState) -> None:
    """The CernVM Online context of the PIN becomes the user-data (over any other source's)."""
    from ucernvm.context.online import fetch_context  # only machines with a PIN pay for it

    config = state.config
    try:
        context = fetch_context(config.online_pin, config.online_secret, service_url=config.service_url, cafile=CA_BUNDLE)
    except ContextError as error:
        state.warn(f"CernVM Online: {error.message}")
        return
    apply_user_data(state, context.user_data, "CernVM Online")
    state.facts["context"]["online_context"] = context.name


def settle_context(state: BootState) -> None:
    """After the storage stage: save the first boot's context, or bring back the saved one."""
    directory = state.scratch / "context"
    saved = directory / "user-data"
    if not state.scratch_fresh and saved.exists():
        _restore_context(state, directory)
        return
    found = state.found_context
    if not state.scratch_fresh and state.user_data is None and found is None:
        _restore_extra_user_data(state, directory / "extra-user-data")
        return  # a later boot of a first one that had no user-data: its record stands, unwritten again
    actions: list[Action] = [MakeDirs(str(directory)),
                             WriteFile(str(directory / "source"), f"{state.context_source}\n".encode())]
    if state.user_data is not None:
        actions.append(WriteFile(str(saved), state.user_data, 0o600))
        section = _ucernvm_settings(state, state.user_data)
        before_pin = _user_data_before_pin(state)
        if before_pin is not None:
            actions.append(WriteFile(str(directory / BEFORE_PIN), before_pin, 0o600))
            section = {**_ucernvm_settings(state, before_pin), **section}
        actions.append(WriteFile(str(directory / "ucontext"), _ucontext(section), 0o600))
    meta = found.meta.as_nocloud() if found is not None else {}
    if meta:
        actions.append(WriteFile(str(directory / META_DATA), (json.dumps(meta, indent=1) + "\n").encode(), 0o600))
    if found is not None and found.extra_user_data:
        section, _ = section_of(decode(found.extra_user_data))
        actions.append(WriteFile(str(directory / "extra-ucontext"), _ucontext(section), 0o600))
        actions.append(WriteFile(str(directory / "extra-user-data"), found.extra_user_data, 0o600))
    if found is not None and found.pickup is not None:
        actions.append(WriteFile(str(directory / "pickup.tar.gz"), found.pickup, 0o600))
    if state.config.cluster_pin:
        actions.append(WriteFile(str(directory / "ami-contextualized"), b""))
    # A full or failing disk leaves this boot its context (it is applied already) but not the later ones.
    if not state.do_or_warn("the context on the scratch disk (later boots go without it)", *actions):
        return
    if found is not None and found.source == AZURE and found.device:
        # Azure ejects its provisioning medium after the first boot; the OS's amiconfig mounts this copy.
        state.do_or_warn(f"context/{AZURE_ISO} (the copy of Azure's provisioning medium {found.device})",
                         CopyMedium(found.device, str(directory / AZURE_ISO), AZURE_ISO_LIMIT))


def _restore_context(state: BootState, directory: Path) -> None:
    """A later boot's context: what the first boot saved in ``directory``."""
    # A damaged scratch disk must not stop the boot the storage stage is part of.
    user_data = _read_saved(state, directory / "user-data", "this boot has no context")
    if user_data is None:
        return
    _restore_user_data_before_pin(state, directory / BEFORE_PIN)
    apply_user_data(state, user_data, _saved_source(state, directory / "source"))
    meta = _saved_meta(state, directory / META_DATA)
    state.found_context = FoundContext(state.context_source, state.user_data, meta)
    state.facts["context"]["saved"] = True
    _restore_extra_user_data(state, directory / "extra-user-data")


def _ucernvm_settings(state: BootState, user_data: bytes) -> dict[str, str]:
    """As µCernVM saved them in ucontext, for the OS's cvmfs configuration too: the [ucernvm] section
    over what glideinWMS user-data implies."""
    return {**_glideinwms_settings(state, user_data), **section_of(user_data)[0]}


def _user_data_before_pin(state: BootState) -> bytes | None:
    """The first boot's user-data from its source, if a CernVM Online context replaced it."""
    found = state.found_context
    if "online_context" not in state.facts.get("context", {}) or found is None or found.user_data is None:
        return None
    return decode(found.user_data)


def _restore_user_data_before_pin(state: BootState, path: Path) -> None:
    before_pin = _read_saved(state, path, "only the online context's settings apply")
    if before_pin is not None:
        apply_section(state, _ucernvm_settings(state, before_pin), "the user-data the CernVM Online context replaced")


def _restore_extra_user_data(state: BootState, path: Path) -> None:
    """The first boot's extra user-data overrides on every boot, as µCernVM's saved extra-ucontext did."""
    extra = _read_saved(state, path, "its settings do not apply")
    if extra is not None:
        apply_extra_user_data(state, extra)


def _read_saved(state: BootState, path: Path, if_unusable: str, limit: int = MAX_USER_DATA) -> bytes | None:
    """A file the first boot saved in context/; None without it, or (with a warning) when it is unusable."""
    return read_scratch(state, str(path.relative_to(state.scratch)), limit, if_unusable)


def _saved_source(state: BootState, path: Path) -> str:
    """The first boot's source name (the OS's bootstrap hook keys on it); "(saved)" when there is none."""
    data = _read_saved(state, path, "the context's source is given as (saved)", SOURCE_LIMIT)
    if data is None:
        return "(saved)"
    try:
        name = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = ""
    if not name or not name.isprintable() or len(name) > 64:
        state.warn(f"the saved source name {path.name} is damaged: the context's source is given as (saved)")
        return "(saved)"
    return name


def _saved_meta(state: BootState, path: Path) -> MetaData:
    """The first boot's meta-data: the same instance-id, so the OS's cloud-init sees the same instance
    and leaves its per-instance work (host keys, users) done; a damaged file means a new instance."""
    data = _read_saved(state, path, "cloud-init sees a new instance")
    if data is None:
        return MetaData()
    try:
        return MetaData.from_nocloud(json.loads(data))
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        state.warn(f"the saved meta-data {path.name} is unreadable ({str(error)[:80]}): cloud-init sees a new instance")
        return MetaData()


# µCernVM's parser wrote these words as 1 and 0, which the OS's scripts test for
_UCONTEXT_BOOLEANS = {"yes": "1", "on": "1", "true": "1", "no": "0", "off": "0", "false": "0"}


def _ucontext(section: dict[str, str]) -> bytes:
    """µCernVM's ``_UCONTEXT_<KEY>=<value>`` lines, which the OS's own scripts grep and pass to a shell
    (S05cvmfs-config.sh appends the proxy lines to /etc/cvmfs/site.conf): each value in double quotes,
    as CernVM Online writes them, so that ``;`` and ``|`` in a proxy list neither end nor pipe it."""
    return "".join(f"_UCONTEXT_{key.upper()}={_shell_quoted(_UCONTEXT_BOOLEANS.get(value.lower(), value))}\n"
                   for key, value in section.items()).encode()


def _shell_quoted(value: str) -> str:
    """``value`` in shell double quotes: nothing in it expands or runs."""
    return '"' + "".join(f"\\{character}" if character in '\\"$`' else character for character in value) + '"'
