"""The one ``ucernvm`` command: a dispatcher over the subcommand modules in ``ucernvm.commands``.

Every module in ``ucernvm.commands`` is a subcommand: it exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code. Expected failures
are ``UcernvmError``s, printed as one ``error:`` line (plus a ``hint:`` line) on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from ucernvm import __version__, commands
from ucernvm.errors import UcernvmError

# The order `ucernvm --help` lists the subcommands in; a module in ucernvm.commands that is not named
# here is listed after these, alphabetically.
COMMAND_ORDER = ("repo", "keygen", "publish", "resign", "serve", "mount", "umount", "build", "launch")


def command_modules() -> list[str]:
    names = {module.name for module in pkgutil.iter_modules(commands.__path__)}
    rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ucernvm",
        description="Boot, publish, serve and inspect CernVM-FS operating-system snapshots.",
    )
    parser.add_argument("--version", action="version", version=f"ucernvm {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(f"ucernvm.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except UcernvmError as error:
        print(f"ucernvm: error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"ucernvm: hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("ucernvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `ucernvm repo cat ... | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return 0
