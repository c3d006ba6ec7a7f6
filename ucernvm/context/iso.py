"""Context ISOs: user-data on a CD image in the layouts the boot loader (and cloud-init) read.

``cernvm-launch`` is the tree cernvm-launch's ISOs carry (label CONFIG-2, the user-data under both
ec2/latest and openstack/latest), ``config-drive`` is OpenStack's (label config-2), ``nocloud`` is
cloud-init's seed (label cidata). Names are written three ways (ISO 9660, Rock Ridge and Joliet) so
that every reader sees the real names. The same files make the same image, byte for byte: every date in it
is one fixed date (``image_stamps``), not the time of writing. pycdlib is imported only here, never at boot.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ucernvm.context.contextfile import convert_context_file
from ucernvm.context.found import MetaData
from ucernvm.context.isodates import LAST_DATE, Stamps, stamp_dates
from ucernvm.context.media import USER_DATA_LIMIT
from ucernvm.errors import ConfigError, ContextError

ISO_LAYOUTS = ("cernvm-launch", "config-drive", "nocloud")
CERNVM_LAUNCH_UUID = uuid.UUID("83679162-1378-4288-a2d4-70e13ec132aa")  # its ISOs' id; our ids' namespace
ISO_MAGIC_END = 0x8006  # "CD001" of the first volume descriptor ends here (ISO 9660 / ECMA-119)
README = b"""Context for a CernVM virtual machine (ucernvm context).
ec2/latest and openstack/latest hold the same user-data and meta-data.
"""


def made_instance_id(user_data: bytes, meta: MetaData, network: bytes | None = None) -> str:
    """A UUID made from the context. cloud-init runs its per-instance modules (host keys, users, runcmd) once
    per instance id, and applies a NoCloud network configuration for a new one: a VM booted again with the
    same context is the same instance, one given new user-data, a new host name, new keys or a new network
    configuration a new one. (cernvm-launch writes one fixed UUID into every ISO, so a VM given new
    user-data on the same disk would not run them again.)"""
    parts: list[object] = [hashlib.sha256(user_data).hexdigest(), meta.hostname, list(meta.public_keys)]
    if network is not None:  # only then: the ids of contexts without one stay what they were
        parts.append(hashlib.sha256(network).hexdigest())
    return str(uuid.uuid5(CERNVM_LAUNCH_UUID, json.dumps(parts)))


NETWORK_CONFIG_HINT = "give cloud-init's network configuration, e.g. 'version: 2' with 'ethernets:'"


def check_network_config(data: bytes) -> None:
    """A ConfigError unless ``data`` is a network configuration cloud-init reads from a NoCloud seed: YAML
    of version 1 or 2, at the top or under ``network:``, or ``config: disabled``."""
    import yaml  # only for writing images

    try:
        document = yaml.safe_load(data.decode())
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        mark = getattr(error, "problem_mark", None)
        raise ConfigError("the network configuration is not YAML" + (f" (line {mark.line + 1})" if mark else ""),
                          NETWORK_CONFIG_HINT) from None
    inner = document.get("network", document) if isinstance(document, dict) else None
    if not isinstance(inner, dict) or not (inner.get("version") in (1, 2) or inner.get("config") == "disabled"):
        raise ConfigError("the network configuration has no 'version: 1' or 'version: 2'", NETWORK_CONFIG_HINT)


def context_files(user_data: bytes, layout: str, meta: MetaData,
                  network: bytes | None = None) -> tuple[str, dict[str, bytes]]:
    """The volume label and the files (path -> bytes) of a context ISO; ``network``, cloud-init's network
    configuration, goes only onto a NoCloud seed (a config drive carries OpenStack's network_data.json,
    another format, which the OS's cloud-init does not read once the boot loader has seeded NoCloud)."""
    instance_id = meta.instance_id or made_instance_id(user_data, meta, network)
    if layout == "nocloud":
        lines = [f"instance-id: {json.dumps(instance_id)}"]  # a JSON string is a YAML double-quoted scalar
        if meta.hostname:
            lines.append(f"local-hostname: {json.dumps(meta.hostname)}")
        if meta.public_keys:
            lines += ["public-keys:", *(f"  - {json.dumps(key)}" for key in meta.public_keys)]
        files = {"user-data": user_data, "meta-data": "\n".join(lines).encode() + b"\n"}
        return "cidata", files if network is None else {**files, "network-config": network}
    if network is not None and layout in ISO_LAYOUTS:
        raise ConfigError(f"a network configuration goes only onto a nocloud context, not a {layout} one",
                          "add --format nocloud")
    document: dict[str, object] = {"uuid": instance_id}
    if meta.hostname:
        document["hostname"] = meta.hostname
    if meta.public_keys:
        document["public_keys"] = {f"key-{index}": key for index, key in enumerate(meta.public_keys)}
    meta_json = json.dumps(document, indent=1).encode() + b"\n"
    openstack = {"openstack/latest/meta_data.json": meta_json, "openstack/latest/user_data": user_data}
    if layout == "config-drive":
        return "config-2", openstack
    if layout == "cernvm-launch":
        return "CONFIG-2", {"readme": README, "ec2/latest/meta-data.json": meta_json,
                            "ec2/latest/user-data": user_data, **openstack}
    raise ContextError(f"unknown context layout {layout!r}", f"use one of {', '.join(ISO_LAYOUTS)}")


def _iso_name(name: str, taken: set[str], directory: bool) -> str:
    """An ISO 9660 level 3 identifier for ``name`` (d-characters, one dot, at most 30 characters),
    unique in its directory; readers use the Rock Ridge or Joliet name."""
    stem, dot, extension = name.upper().rpartition(".") if "." in name and not directory else (name.upper(), "", "")
    stem = re.sub(r"[^A-Z0-9_]", "_", stem) or "_"
    extension = re.sub(r"[^A-Z0-9_]", "_", extension)[:8]
    limit = 30 - len(extension) - 1
    for counter in range(1000):
        suffix = f"_{counter}" if counter else ""
        candidate = stem[: limit - len(suffix)] + suffix + (f".{extension}" if dot else "")
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    raise ContextError(f"too many files named like {name!r} in one directory")


def image_stamps() -> Stamps:
    """The one date of every date field of an image: SOURCE_DATE_EPOCH when set, as reproducible builds set
    it, else the Unix epoch; never the time of writing, so that the same files make the same image."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if value and not (re.fullmatch(r"[0-9]{1,12}", value) and int(value) <= LAST_DATE.timestamp()):
        raise ConfigError(f"SOURCE_DATE_EPOCH={value[:40]!r} is no date an ISO image holds",
                          "set it to the seconds since 1970 (date +%s) of a date before 2156, or unset it")
    return Stamps(datetime.fromtimestamp(int(value or 0), timezone.utc))


def write_iso(path: Path, label: str, files: dict[str, bytes]) -> None:
    """An ISO 9660 image with Rock Ridge and Joliet names holding ``files`` (relative path -> bytes), the same
    bytes for the same files, label and ``image_stamps``."""
    import pycdlib  # heavy, and only for writing images: never imported at boot

    stamps = image_stamps()
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3, vol_ident=label)
    made: dict[str, str] = {"": ""}  # real directory path -> ISO path
    taken: dict[str, set[str]] = {"": set()}
    try:
        for relative in sorted(files):
            parts = [part for part in relative.split("/") if part]
            for depth in range(1, len(parts)):
                real = "/".join(parts[:depth])
                if real not in made:
                    parent = "/".join(parts[: depth - 1])
                    made[real] = f"{made[parent]}/{_iso_name(parts[depth - 1], taken[parent], True)}"
                    taken[real] = set()
                    iso.add_directory(made[real], rr_name=parts[depth - 1], joliet_path=f"/{real}")
            parent = "/".join(parts[:-1])
            data = files[relative]
            iso_path = f"{made[parent]}/{_iso_name(parts[-1], taken[parent], False)};1"
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=parts[-1], joliet_path=f"/{'/'.join(parts)}")
        image = io.BytesIO()
        iso.write_fp(image)
        stamped = bytearray(image.getbuffer())
        stamp_dates(stamped, stamps)
        path.write_bytes(stamped)
    except pycdlib.pycdlibexception.PyCdlibException as error:
        raise ContextError(f"cannot write {path}: {error}") from None
    except OSError as error:
        raise ContextError(f"cannot write {path}: {error.strerror}") from None
    finally:
        iso.close()


def write_context_iso(path: Path, user_data: bytes, layout: str = "cernvm-launch", meta: MetaData | None = None,
                      network: bytes | None = None) -> str:
    """Write a context ISO; returns its volume label."""
    label, files = context_files(user_data, layout, meta or MetaData(), network)
    write_iso(path, label, files)
    return label


def starts_iso9660(head: bytes) -> bool:
    """Whether *head* (at least the first ISO_MAGIC_END bytes of a file) starts an ISO 9660 image."""
    return head[ISO_MAGIC_END - 5:ISO_MAGIC_END] == b"CD001"


def read_user_data(source: Path) -> tuple[bytes, list[str]]:
    """The user-data of the file *source* for a context ISO, with warnings: a public-contexts ``.context``
    file is checked and converted; more than the boot loader reads is refused."""
    try:
        user_data = source.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read user-data {source}: {error.strerror}") from None
    if starts_iso9660(user_data):
        raise ConfigError(f"{source} is already an ISO 9660 image, not user-data",
                          f"attach it as it is: ucernvm launch --context {source}")
    warnings: list[str] = []
    if source.suffix == ".context":
        user_data, warnings = convert_context_file(user_data)
    if len(user_data) > USER_DATA_LIMIT:
        raise ConfigError(f"{source} has {len(user_data)} bytes: the boot loader reads at most {USER_DATA_LIMIT}",
                          "compress it with gzip")
    return user_data, warnings
