"""Pairing a running machine by PIN: ``ucernvm pin``, and the ``#<PIN>`` console login.

The context's user-data becomes the machine's user-data twice over:

- on the scratch disk, ``/mnt/.rw/context/user-data`` (the previous one kept as
  ``user-data.previous``): the boot loader reads it at the next boot, ``[ucernvm-begin]`` included;
- as a cloud-init NoCloud seed, ``/var/lib/cloud/seed/nocloud/{user-data,meta-data}`` with a new
  ``instance-id``, so that cloud-init treats the machine as a new instance and runs it again
  (``public-keys`` carries the context's root key).

A reboot applies it; ``--apply`` runs cloud-init's stages at once instead. Like ``online.py``, this
module runs on its own (``python3 -m ucernvm.context.pairing``) in an OS without ucernvm: the boot
loader installs both for the login hook.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ucernvm.context.defaults import CONTEXT_DIR, SEED_DIR, SERVICE_URL
from ucernvm.context.online import OnlineContext, fetch_context, needs_secret, normalize_pin
from ucernvm.context.userdata import for_cloud_init
from ucernvm.errors import ContextError, UcernvmError

CLOUD_INIT_STAGES = (
    ("clean", "--logs"),
    ("init",),
    ("modules", "--mode", "config"),
    ("modules", "--mode", "final"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pin", metavar="PIN", help="the 6-digit pairing PIN (spaces and dashes are ignored)")
    parser.add_argument("--secret", help="the secret of an encrypted context (PINs ending in an odd digit); "
                                         "asked for when needed and not given")
    parser.add_argument("--service", default=SERVICE_URL, metavar="URL",
                        help="the CernVM Online service (default: %(default)s)")
    parser.add_argument("--apply", action="store_true",
                        help="apply the context now by running cloud-init again (when it is installed) "
                             "instead of at the next boot")
    parser.add_argument("--context-dir", default=CONTEXT_DIR, metavar="DIR",
                        help="the scratch disk's context directory (default: %(default)s; skipped when its "
                             "parent does not exist, i.e. the machine was not booted by ucernvm)")
    parser.add_argument("--seed-dir", default=SEED_DIR, metavar="DIR",
                        help="the cloud-init NoCloud seed directory (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    pin = normalize_pin(args.pin)
    secret = args.secret or ""
    if needs_secret(pin) and not secret:
        secret = _ask_secret()
    context = fetch_context(pin, secret, service_url=args.service)
    print(f'CernVM Online context "{context.name}" ({context.context_uuid or "no id"}) for PIN {pin}: '
          f"{len(context.user_data)} bytes of user-data")
    for line in install_context(context, Path(args.context_dir), Path(args.seed_dir)):
        print(f"  {line}")
    if args.apply:
        if apply_with_cloud_init():
            print("Applied with cloud-init.")
            return 0
        print("cloud-init is not installed here.")
    print("Reboot to apply it.")
    return 0


def _ask_secret() -> str:
    """The secret from the terminal without echo, or a line of standard input when it is not one."""
    try:
        if sys.stdin.isatty():
            secret = getpass.getpass("Context secret: ")
        else:
            secret = _read_line().rstrip("\r")
    except (EOFError, OSError):
        secret = ""
    if not secret:
        raise ContextError("this PIN is for an encrypted context and no secret was given",
                           "give the context's secret with --secret")
    return secret


def _read_line() -> str:
    """One line of standard input, read a byte at a time: a buffered read could swallow the lines
    meant for whoever reads the input next (the login hook's reboot question)."""
    line = b""
    while not line.endswith(b"\n") and len(line) < 4096:
        byte = os.read(sys.stdin.fileno(), 1)
        if not byte:
            break
        line += byte
    return line.decode("utf-8", "replace").rstrip("\n")


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically: a crash leaves the old or the new file, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def meta_data(context: OnlineContext, now: float) -> bytes:
    """NoCloud meta-data (JSON is YAML): an instance-id never seen before, and the root key."""
    tag = re.sub(r"[^A-Za-z0-9]", "", context.context_uuid)[:12] or "context"  # cloud-init makes it a path
    data: dict[str, object] = {"instance-id": f"ucernvm-online-{tag}-{int(now * 1000)}"}
    if context.root_pubkey:
        data["public-keys"] = [context.root_pubkey]
    return (json.dumps(data, indent=1) + "\n").encode()


def install_context(context: OnlineContext, context_dir: Path, seed_dir: Path,
                    now: float | None = None) -> list[str]:
    """Write the context as the machine's user-data; returns what was written, for the user."""
    done = []
    try:
        if context_dir.parent.is_dir():
            context_dir.mkdir(mode=0o700, exist_ok=True)
            current = context_dir / "user-data"
            note = ""
            if current.exists():
                _write(context_dir / "user-data.previous", current.read_bytes())
                note = " (the previous one is now user-data.previous)"
            _write(current, context.user_data)
            done.append(f"user-data for the next boot: {current}{note}")
        else:
            done.append(f"no {context_dir.parent} (not booted by ucernvm): only the cloud-init seed is written")
        seed_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        meta = meta_data(context, time.time() if now is None else now)
        _write(seed_dir / "user-data", for_cloud_init(context.user_data))
        _write(seed_dir / "meta-data", meta)
    except OSError as error:
        raise ContextError(f"cannot write the context: {error.filename}: {error.strerror}",
                           "run as root, or point --context-dir and --seed-dir elsewhere") from None
    done.append(f"cloud-init seed: {seed_dir} ({json.loads(meta)['instance-id']})")
    return done


def apply_with_cloud_init() -> bool:
    """Run cloud-init's stages for the new instance; False when cloud-init is not installed."""
    program = shutil.which("cloud-init")
    if program is None:
        return False
    for stage in CLOUD_INIT_STAGES:
        command = [program, *stage]
        try:
            result = subprocess.run(command, check=False)
        except OSError as error:
            raise ContextError(f"cannot run {' '.join(command)}: {error.strerror}") from None
        if result.returncode != 0:
            raise ContextError(f"`cloud-init {' '.join(stage)}` failed (exit status {result.returncode})",
                               "see /var/log/cloud-init.log; the files are written, a reboot applies them")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """The command without ucernvm's command line (the booted OS's copy of this module)."""
    parser = argparse.ArgumentParser(prog="ucernvm-pin", description="Pair this machine with a CernVM Online "
                                     "context by PIN: write its user-data for the next boot and for cloud-init.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UcernvmError as error:
        print(f"ucernvm-pin: error: {error.message}", file=sys.stderr)
        if error.hint:
            print(f"ucernvm-pin: hint: {error.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
