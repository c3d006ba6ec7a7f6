"""``ucernvm demo``: the whole chain on embedded defaults, in a scratch directory.

Creates repository keys, publishes a small demo tree as a tagged snapshot, serves it with the embedded
stratum server, and reads it back over HTTP through the verified client.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

from ucernvm.client.fetcher import HttpSource
from ucernvm.client.repository import Repository
from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.signing import generate_repository_keys
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.server import StratumServer

FQRN = "demo.cern.ch"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="publish a demo snapshot, serve it, read it back", description=__doc__)
    parser.add_argument(
        "--workdir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "ucernvm", "demo"),
        help="scratch directory (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="port of the stratum server (default: any free port)")
    parser.add_argument("--serve", action="store_true", help="keep serving after the demo until Ctrl-C")
    parser.set_defaults(func=run)


def make_demo_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "os-release").write_text('NAME="ucernvm demo"\nID=ucernvm-demo\n')
    (root / "etc" / "motd").write_text(f"Welcome to the ucernvm demo, published {time.ctime()}\n")
    (root / "bin").mkdir(exist_ok=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello from CernVM-FS\n")
    (root / "bin" / "hello").chmod(0o755)
    (root / "usr" / "share").mkdir(parents=True, exist_ok=True)
    (root / "usr" / ".cvmfscatalog").touch()
    (root / "usr" / "share" / "data.bin").write_bytes(os.urandom(20 << 20))


def run(args: argparse.Namespace) -> int:
    work = Path(args.workdir)
    keys, tree, stratum = work / "keys", work / "tree", work / "stratum"
    if not (keys / f"{FQRN}.pub").exists():
        generate_repository_keys(FQRN, keys)
    make_demo_tree(tree)
    result = Publisher(str(stratum / FQRN), FQRN, str(keys), PublishOptions(tag="demo")).publish(str(tree))
    print(f"published {FQRN} revision {result.revision} ({result.files} files, {result.seconds:.2f} s)")
    with StratumServer(stratum, port=args.port) as server:
        url = f"{server.url}/cvmfs/{FQRN}"
        print(f"serving {stratum} on {server.url}")
        repository = Repository(HttpSource([url]), FQRN, load_master_keys(keys / f"{FQRN}.pub"), tag="demo")
        print(f"verified over HTTP: revision {repository.revision}, root catalog {repository.root_hash}")
        for path, entry in repository.walk():
            kind = "d" if entry.is_directory else "-"
            print(f"  {kind} {entry.size:>10} {path}")
        print(repository.read("/etc/motd").decode(), end="")
        if args.serve:
            print(f"try: ucernvm repo ls '{url}' -R -l --key {keys / f'{FQRN}.pub'}")
            stop = threading.Event()
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
            print("serving until Ctrl-C")
            stop.wait()
    return 0
