"""User-data on local media: the layouts µCernVM reads from a mounted partition, plus NoCloud.

Each reader looks at the root of a file system mounted read-only and returns a ``FoundContext`` or
None. Nothing found on a medium is trusted: files are read as boot/untrusted.py reads them (no
symbolic links, only small regular files), and every parser survives garbage with a warning.
OpenNebula's ``context.sh`` is tokenised as shell words and never executed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shlex
from collections.abc import Callable
from ipaddress import IPv4Interface, ip_address
from pathlib import Path

from ucernvm.boot.untrusted import UnusableFile, read_file
from ucernvm.context.found import (AZURE, CONFIG_DRIVE, NOCLOUD, OPEN_NEBULA, PICKUP_LIMIT, VSPHERE, BlockDevice, FoundContext,
                                   MetaData, StaticInterface)

USER_DATA_LIMIT = 4 << 20  # clouds cap user-data at 16-256 KB; cernvm-launch at ~150 KB
META_LIMIT = 256 << 10
AZURE_TAG = "E6DA6616-8EC4-48E0-BE93-58CE6ACE3CFB.tag"
ISO_TYPES = ("iso9660", "udf")  # an ISO with a UDF bridge is reported as udf, as blkid does
CONFIG_TYPES = (*ISO_TYPES, "vfat")

Warn = Callable[[str], None]


def _read(root: Path, relative: str, limit: int, warn: Warn) -> bytes | None:
    try:
        return read_file(root, relative, limit)
    except UnusableFile as problem:
        warn(f"ignored {problem}")
        return None


def _exists(root: Path, relative: str) -> bool:
    return os.path.lexists(root / relative)


# ------------------------------------------------------------------------------------- meta-data

_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]+")


def clean(value: object, limit: int = 255) -> str:
    """A one-line printable string, or "": a value that goes into files the OS parses (YAML, shell)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return value if len(value) <= limit and _PRINTABLE.fullmatch(value) else ""


def _keys(values: object) -> tuple[str, ...]:
    """SSH keys as cloud-init's normalize_pubkey_data reads them: a string's lines, a list's items, or a
    mapping's values, each a key or a list of keys."""
    if isinstance(values, str):
        items: list[object] = list(values.splitlines())
    elif isinstance(values, list):
        items = values
    elif isinstance(values, dict):
        items = [key for value in values.values() if isinstance(value, (str, list))
                 for key in ([value] if isinstance(value, str) else value)]
    else:
        items = []
    keys = (clean(item, 16384) for item in items if isinstance(item, str))
    return tuple(key for key in keys if key)


def json_meta(data: bytes, what: str, warn: Warn) -> MetaData | None:
    """OpenStack's meta_data.json (uuid, hostname, public_keys); None when it is not a JSON object."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        warn(f"{what} is not JSON ({str(error)[:80]}): ignored")
        return None
    if not isinstance(document, dict):
        warn(f"{what} is not a JSON object: ignored")
        return None
    return MetaData(
        instance_id=clean(document.get("uuid") or document.get("instance-id")),
        hostname=clean(document.get("hostname") or document.get("local-hostname")),
        public_keys=_keys(document.get("public_keys") or document.get("public-keys") or ()),
    )


def nocloud_meta(data: bytes, warn: Warn) -> MetaData:
    """NoCloud's meta-data, YAML (or JSON): by a line reader where each line is one it reads exactly as YAML
    does (``key: scalar``, or ``- scalar`` under a key), else by PyYAML, which the image carries for the
    OS's cloud.cfg on GCE (importing it takes 8 ms on a host and ten times that under emulation)."""
    if data.lstrip().startswith(b"{"):
        return json_meta(data, "meta-data", warn) or MetaData()
    text = data.decode("utf-8", "replace")
    document = _plain_meta(text)
    if document is None:
        document = _yaml_meta(text, warn)
    return MetaData(instance_id=clean(document.get("instance-id")),
                    hostname=clean(document.get("local-hostname") or document.get("hostname")),
                    public_keys=_keys(document.get("public-keys")))


# A YAML scalar the line reader takes: quoted without escapes, or plain (no indicator first, no ": " or
# " #" inside, no ":" or blank last); anything else is PyYAML's to read. Blanks are taken only with the
# character after them, so that no line makes the matching backtrack more than once over it.
_SCALAR = (r"""(?:"[^"\\\n]*"|'[^'\n]*'"""
           r"""|[^-?:,\[\]{}#&*!|>'"%@`\s](?:[ \t]*(?:[^\s#:]|:(?=\S))|#)*)""")
_END = r"(?:[ \t]+(?:#.*)?)?"  # blanks, and a comment after them
_TOP_LINE = re.compile(rf"([A-Za-z0-9_.-]+):(?:[ \t]+({_SCALAR}))?{_END}")
# Plain scalars YAML may read as no string (numbers, booleans, null: "0123" is 83): PyYAML's to read.
_TYPED = re.compile(r"[0-9+.~].*|y|n|yes|no|true|false|on|off|null", re.IGNORECASE)
_ITEM_LINE = re.compile(rf"([ \t]*)-[ \t]+({_SCALAR}){_END}")


def _plain_meta(text: str) -> dict[str, object] | None:
    """The mapping of meta-data made only of lines the line reader reads exactly; None for any other."""
    try:
        return _plain_lines(text)
    except ValueError:  # a typed scalar
        return None


def _plain_lines(text: str) -> dict[str, object] | None:
    document: dict[str, object] = {}
    key, indent = None, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = _ITEM_LINE.fullmatch(line)
        if item is not None and key is not None and indent in (None, item.group(1)):
            if indent is None:  # the key's first item: its value, null so far, becomes a list
                indent, document[key] = item.group(1), []
            items = document[key]
            if isinstance(items, list):
                items.append(_unquoted(item.group(2)))
            continue
        top = _TOP_LINE.fullmatch(line)
        if top is None or item is not None:
            return None
        key, indent = (top.group(1), None) if top.group(2) is None else (None, None)
        document[top.group(1)] = None if top.group(2) is None else _unquoted(top.group(2))
    return document


def _unquoted(scalar: str) -> str:
    """A scalar's string; a ValueError for a plain one YAML may read as something else."""
    if scalar[0] in "\"'":
        return scalar[1:-1]
    if _TYPED.fullmatch(scalar):
        raise ValueError(scalar)
    return scalar


def _yaml_meta(text: str, warn: Warn) -> dict:
    import yaml  # only meta-data the line reader cannot read exactly needs it

    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        mark = getattr(error, "problem_mark", None)
        warn("meta-data is not YAML" + (f" (line {mark.line + 1})" if mark else "") + ": ignored")
        return {}
    if not isinstance(document, dict):
        warn("meta-data is not a YAML mapping: ignored")
        return {}
    return document


# ------------------------------------------------------------------------------------- context.sh

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# cloud-init's OpenNebula datasource names the machine by the first of these that context.sh sets.
HOSTNAME_VARIABLES = ("SET_HOSTNAME", "HOSTNAME", "PUBLIC_IP", "IP_PUBLIC", "ETH0_IP")
_DECLARATIONS = {"export", "readonly", "declare", "local", "typeset"}


def parse_context_sh(text: str) -> dict[str, str]:
    """The variables a shell would assign in ``text``, read as words and never run: quotes and
    backslashes are undone, ``$``/backquote expansions stay literal text, commands are ignored."""
    try:
        return _assignments(text)
    except ValueError:  # an unbalanced quote: keep what each line still says on its own
        variables: dict[str, str] = {}
        for line in text.splitlines():
            try:
                variables.update(_assignments(line))
            except ValueError:
                continue
        return variables


def _assignments(text: str) -> dict[str, str]:
    separators = ";&|()<>\n"
    lexer = shlex.shlex(text, posix=True, punctuation_chars=separators)
    lexer.whitespace = " \t\r"  # a newline ends a command: it must come out as a token
    lexer.whitespace_split = True
    lexer.commenters = "#"
    variables: dict[str, str] = {}
    command_start = True
    for token in lexer:
        if token and all(character in separators for character in token):
            command_start = True
            continue
        name, equals, value = token.partition("=")
        if command_start and equals and _NAME.fullmatch(name):
            variables[name] = value
        elif not (command_start and token in _DECLARATIONS):
            command_start = False  # a command's arguments are not assignments
    return variables


def static_network(variables: dict[str, str], warn: Warn) -> tuple[StaticInterface, ...]:
    """ETH<n>_{MAC,IP,MASK,GATEWAY,DNS,MTU} as validated interfaces (OpenNebula's and one_network's names)."""
    numbers = sorted({int(match.group(1)) for name in variables if (match := re.fullmatch(r"ETH(\d{1,3})_IP", name))})
    interfaces = []
    for number in numbers:
        prefix = f"ETH{number}_"
        value = {key: variables.get(prefix + key, "").strip() for key in ("IP", "MASK", "MAC", "GATEWAY", "DNS", "MTU")}
        try:
            address = IPv4Interface(f"{value['IP']}/{value['MASK'] or '24'}")
        except ValueError:
            warn(f"context.sh: {prefix}IP/{prefix}MASK {value['IP']!r}/{value['MASK']!r} is not an IPv4 address: "
                 "ignored")
            continue
        mac = value["MAC"].lower()
        if mac and not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac):
            warn(f"context.sh: {prefix}MAC {mac!r} is not a MAC address: ignored")
            mac = ""
        gateway = _address(value["GATEWAY"], f"{prefix}GATEWAY", warn)
        servers = (value["DNS"] or variables.get("DNS", "")).split()
        dns = tuple(filter(None, (_address(word, f"{prefix}DNS", warn) for word in servers)))
        mtu = int(value["MTU"]) if value["MTU"].isdigit() and 68 <= int(value["MTU"]) <= 65535 else None
        interfaces.append(StaticInterface(f"eth{number}", mac, str(address), gateway, dns, mtu))
    return tuple(interfaces)


def _address(text: str, what: str, warn: Warn) -> str:
    if not text:
        return ""
    try:
        return str(ip_address(text))
    except ValueError:
        warn(f"context.sh: {what} {text!r} is not an IP address: ignored")
        return ""


def decode_base64(text: str, what: str, warn: Warn) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        warn(f"{what} is not base64: the user-data is taken as empty")
        return b""


# ------------------------------------------------------------------------------------- layouts


def read_config_drive(root: Path, device: BlockDevice, warn: Warn) -> FoundContext | None:
    """openstack/latest/user_data (µCernVM: any iso9660 or vfat, no label check; cernvm-launch's
    CONFIG-2 ISO), else ec2/latest/user-data; a drive with meta-data but no user-data counts too."""
    user_data = _read(root, "openstack/latest/user_data", USER_DATA_LIMIT, warn)
    if user_data is None:
        user_data = _read(root, "ec2/latest/user-data", USER_DATA_LIMIT, warn)
    meta = None
    for name in ("openstack/latest/meta_data.json", "ec2/latest/meta-data.json"):
        data = _read(root, name, META_LIMIT, warn)
        if data is not None:
            meta = json_meta(data, name, warn)
            break
    if user_data is None and meta is None:
        return None
    return FoundContext(CONFIG_DRIVE, user_data or b"", meta or MetaData(), device=device.path)


def read_opennebula(root: Path, device: BlockDevice, warn: Warn) -> FoundContext | None:
    """context.sh with EC2_USER_DATA (base64; µCernVM's, cernvm-launch's) or else OpenNebula's own
    USER_DATA, and static network values."""
    data = _read(root, "context.sh", 2 * USER_DATA_LIMIT, warn)
    if data is None:
        return None
    variables = parse_context_sh(data.decode("utf-8", "replace"))
    meta = MetaData(hostname=clean(next((variables[name] for name in HOSTNAME_VARIABLES if name in variables), "")),
                    public_keys=_opennebula_keys(variables))
    return FoundContext(OPEN_NEBULA, _opennebula_user_data(variables, warn), meta, static_network(variables, warn),
                        device=device.path)


def _opennebula_keys(variables: dict[str, str]) -> tuple[str, ...]:
    """SSH_KEY when context.sh sets it (even empty), else SSH_PUBLIC_KEY, one key a line and '#' lines
    left out, as cloud-init's OpenNebula datasource reads them."""
    lines = variables.get("SSH_KEY" if "SSH_KEY" in variables else "SSH_PUBLIC_KEY", "").splitlines()
    return _keys([line for line in lines if not line.startswith("#")])


def _opennebula_user_data(variables: dict[str, str], warn: Warn) -> bytes:
    """EC2_USER_DATA, else USER_DATA or USERDATA as cloud-init's OpenNebula datasource reads them (base64 only
    when USERDATA_ENCODING or USER_DATA_ENCODING says so): the OS's cloud-init is seeded with what is found
    here instead of reading context.sh itself, so an OpenNebula template's user-data must not be lost."""
    if "EC2_USER_DATA" in variables:
        return decode_base64(variables["EC2_USER_DATA"], "context.sh EC2_USER_DATA", warn)
    name = next((name for name in ("USER_DATA", "USERDATA") if name in variables), None)
    if name is None:
        return b""
    encoding = variables.get("USERDATA_ENCODING", variables.get("USER_DATA_ENCODING", ""))
    if encoding == "base64":
        return decode_base64(variables[name], f"context.sh {name}", warn)
    return variables[name].encode()


def read_vsphere(root: Path, device: BlockDevice, warn: Warn) -> FoundContext | None:
    user_data = _read(root, "user-data.txt", USER_DATA_LIMIT, warn)
    return None if user_data is None else FoundContext(VSPHERE, user_data, device=device.path)


_CUSTOM_DATA = re.compile(rb"<(?:[\w.-]+:)?CustomData\b[^>]*>([A-Za-z0-9+/=\s]*)</(?:[\w.-]+:)?CustomData>")


def read_azure(root: Path, device: BlockDevice, warn: Warn) -> FoundContext | None:
    """The provisioning medium (marked by the tag file): CustomData.bin as µCernVM, else the base64
    CustomData element of ovf-env.xml (a pattern: no XML parser in the image for one element)."""
    if not _exists(root, AZURE_TAG):
        return None
    user_data = _read(root, "CustomData.bin", USER_DATA_LIMIT, warn)
    if user_data is None:
        ovf = _read(root, "ovf-env.xml", 2 * USER_DATA_LIMIT, warn) or b""
        match = _CUSTOM_DATA.search(ovf)
        user_data = decode_base64(match.group(1).decode(), "ovf-env.xml CustomData", warn) if match else b""
    return FoundContext(AZURE, user_data, device=device.path)


NOCLOUD_LABELS = ("cidata", "CIDATA")  # cloud-init looks for the label in lower and in upper case, no other
NOCLOUD_TYPES = ("iso9660", "vfat")
NOCLOUD_FILES = ("user-data", "meta-data")  # both, or cloud-init takes no seed; vendor-data, network-config optional


def read_nocloud(root: Path, device: BlockDevice, warn: Warn) -> FoundContext | None:
    """A cloud-init NoCloud seed as cloud-init takes one: an iso9660 or vfat file system labelled cidata or
    CIDATA with user-data and meta-data at its root. A medium that is almost one (the label in another case
    or on another file system, a file missing, or both files under another label) is a warning saying why
    it was not taken, as the OS's cloud-init will not take it either."""
    labelled = device.label.lower() == "cidata"
    if not labelled and not all(_exists(root, name) for name in NOCLOUD_FILES):
        return None
    user_data = _read(root, "user-data", USER_DATA_LIMIT, warn)
    meta_data = _read(root, "meta-data", META_LIMIT, warn)
    problems = [f"it has no {name}" for name, data in zip(NOCLOUD_FILES, (user_data, meta_data)) if data is None]
    if device.label not in NOCLOUD_LABELS:
        problems.append(f"its label is {device.label!r}, where cloud-init wants cidata or CIDATA")
    if device.fstype not in NOCLOUD_TYPES:
        problems.append(f"it is {device.fstype}, where cloud-init reads iso9660 or vfat")
    if problems:
        warn(f"not a NoCloud seed, as cloud-init would not take it either: {'; '.join(problems)}")
        return None
    return FoundContext(NOCLOUD, user_data or b"", nocloud_meta(meta_data or b"", warn), device=device.path)


Reader = Callable[[Path, BlockDevice, Warn], FoundContext | None]

# In µCernVM's order (the first source found on any medium wins), each with the file systems it reads.
LAYOUTS: dict[str, tuple[tuple[str, ...], Reader]] = {
    CONFIG_DRIVE: (CONFIG_TYPES, read_config_drive),
    OPEN_NEBULA: (CONFIG_TYPES, read_opennebula),
    VSPHERE: (ISO_TYPES, read_vsphere),
    AZURE: (("udf",), read_azure),
    NOCLOUD: (CONFIG_TYPES, read_nocloud),
}


def read_extras(root: Path, warn: Warn) -> tuple[bytes, bytes | None]:
    """/cernvm/extra-user-data and /cernvm/pickup.tar.gz of one partition (baked into images)."""
    return (_read(root, "cernvm/extra-user-data", USER_DATA_LIMIT, warn) or b"",
            _read(root, "cernvm/pickup.tar.gz", PICKUP_LIMIT, warn))

