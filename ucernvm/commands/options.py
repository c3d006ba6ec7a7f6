"""``ucernvm options``: every boot setting, its kernel and context spellings, type and default."""

from __future__ import annotations

import argparse

from ucernvm.config import options_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "options",
        help="list the boot loader's settings (kernel command line and [ucernvm-begin] keys)",
        description="Print the table of every boot setting. Precedence: defaults < kernel command line < "
        "[ucernvm-begin] section of the user-data; a snapshot pinned on the scratch disk overrides the tag.",
    )
    parser.set_defaults(func=lambda args: print(options_table(), end="") or 0)
