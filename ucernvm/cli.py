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
from ucernvm.errors import ConfigError, UcernvmError

# The order `ucernvm --help` lists the subcommands in; a module in ucernvm.commands that is not named
# here is listed after these, alphabetically.
COMMAND_ORDER = (
    "demo", "build", "launch", "context", "options", "report",
    "repo", "keygen", "publish", "tag", "resign", "serve", "mount", "umount", "stat", "pin",
)  # fmt: skip


def command_modules() -> list[str]:
    names = {module.name for module in pkgutil.iter_modules(commands.__path__)}
    rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def needed_commands(argv: Sequence[str]) -> list[str]:
    """The subcommand modules that parsing *argv* needs: the one it names, none for a dry run, else all
    (for the overall help and the list of choices). Each module imports what its command uses (numpy,
    cryptography, ELF parsing): all of them took 0.4 s of every start."""
    names = command_modules()
    named = [token for token in argv if token in names]
    if named:
        return named[:1]
    asks_help = "-h" in argv or "--help" in argv
    return [] if "--dry-run" in argv and not asks_help else names


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the subcommands *names* (default: all)."""
    parser = argparse.ArgumentParser(
        prog="ucernvm",
        description="Boot, publish, serve and inspect CernVM-FS operating-system snapshots.",
    )
    parser.add_argument("--version", action="version", version=f"ucernvm {__version__}")
    dry = parser.add_argument_group("dry run (the boot pipeline on this machine, recording instead of acting)")
    dry.add_argument("--dry-run", action="store_true", help="run the boot stages: talk to the real servers, "
                     "verify and resolve the snapshot, print the plan and timings; change nothing")
    dry.add_argument("--cmdline", default="", help="kernel command line to boot with (default: none)")
    dry.add_argument("--user-data", metavar="FILE", help="user-data to contextualize with")
    dry.add_argument("--keys", metavar="DIR", default="/etc/cvmfs/keys",
                     help="master public keys, as the image's /etc/cvmfs/keys (default: %(default)s)")
    dry.add_argument("--json", action="store_true",
                     help="print the boot report (with the plan) as JSON instead of the plan and timing table")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in command_modules() if names is None else names:
        importlib.import_module(f"ucernvm.commands.{name}").register(subparsers)
    return parser


def run_dry_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ucernvm.boot.dryrun import dry_run

    try:
        user_data = Path(args.user_data).read_bytes() if args.user_data else None
    except OSError as error:
        raise ConfigError(f"cannot read user-data {args.user_data}: {error.strerror}") from None
    return dry_run(args.cmdline, user_data, Path(args.keys), args.json)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(needed_commands(argv))
    args = parser.parse_args(argv)
    if args.dry_run and not hasattr(args, "func"):
        args.func = run_dry_run
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
