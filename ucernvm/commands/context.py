"""``ucernvm context USER_DATA -o ctx.iso``: a context ISO to attach to a VM as a CD."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ucernvm.context.found import MetaData
from ucernvm.context.iso import ISO_LAYOUTS, check_network_config, read_user_data, write_context_iso
from ucernvm.context.media import clean
from ucernvm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "context",
        help="write user-data to a context ISO (cernvm-launch, config-drive or NoCloud layout)",
        description="Write USER_DATA (any user-data, or a public-contexts .context file, which is checked "
        "and converted) to an ISO image that the boot loader and cloud-init read when it is attached as a CD. "
        "The same inputs make the same image, byte for byte: every date in it is SOURCE_DATE_EPOCH when that is "
        "set, else 1970-01-01 00:00:00 UTC, never the time of writing.",
    )
    parser.add_argument("user_data", metavar="USER_DATA", help="user-data file; FILE.context is converted")
    parser.add_argument("-o", "--output", required=True, metavar="ISO", help="the image to write")
    parser.add_argument("--format", choices=ISO_LAYOUTS, default="cernvm-launch",
                        help="layout: cernvm-launch (label CONFIG-2, ec2/ and openstack/ trees; default), "
                        "config-drive (label config-2), nocloud (label cidata)")
    parser.add_argument("--instance-id", default="",
                        help="meta-data instance id (default: a UUID made from the user-data, host name, keys and "
                        "network configuration: cloud-init takes a VM booted again with the same context for the same "
                        "instance, and runs its per-instance modules again only for a new one)")
    parser.add_argument("--hostname", default="", help="meta-data host name")
    parser.add_argument("--ssh-key", action="append", default=[], metavar="FILE",
                        help="public SSH key file for the meta-data (repeatable)")
    parser.add_argument("--network-config", metavar="FILE",
                        help="cloud-init network configuration (YAML, version 1 or 2) for the OS, written as the "
                        "seed's network-config; with --format nocloud only")
    parser.set_defaults(func=run)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror}") from None


def _field(value: str, what: str, limit: int = 255) -> str:
    if value and not clean(value, limit):
        raise ConfigError(f"{what} {value[:80]!r} is not one printable line of at most {limit} characters")
    return value


def run(args: argparse.Namespace) -> int:
    user_data, warnings = read_user_data(Path(args.user_data))
    for warning in warnings:
        print(f"ucernvm: warning: {warning}", file=sys.stderr)
    keys = []
    for key_file in args.ssh_key:
        text = _read(key_file, "SSH key").decode("utf-8", "replace")
        keys += [line.strip() for line in text.splitlines() if line.strip()]
    meta = MetaData(_field(args.instance_id, "--instance-id"), _field(args.hostname, "--hostname"),
                    tuple(_field(key, "SSH key", 16384) for key in keys))
    network = None
    if args.network_config is not None:
        network = _read(args.network_config, "network configuration")
        check_network_config(network)
    label = write_context_iso(Path(args.output), user_data, args.format, meta, network)
    print(f"{args.output}: {args.format} layout, label {label}, {len(user_data)} bytes of user-data")
    return 0
