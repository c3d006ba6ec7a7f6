"""``ucernvm pin PIN``: pair this (booted) machine with a CernVM Online context."""

from __future__ import annotations

import argparse

from ucernvm.context.pairing import add_arguments, run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pin",
        help="pair this machine with a CernVM Online context by PIN",
        description="Fetch the CernVM Online context of a pairing PIN and make its user-data this machine's: "
                    "on the scratch disk for the boot loader (the previous one is kept as user-data.previous) "
                    "and as a cloud-init NoCloud seed with a new instance-id. A reboot applies it, or --apply "
                    "runs cloud-init at once.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
