"""``ucernvm serve ROOT``: serve the repositories under ROOT as a Stratum 1 (files + geo API)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from pathlib import Path

from ucernvm.errors import ConfigError
from ucernvm.server import GeoDatabase, StratumServer
from ucernvm.server.online import OnlineServer, OnlineService, announce


DESCRIPTION = """\
Serve every repository directory ROOT/<fqrn>/ at /cvmfs/<fqrn>/ with the caching
headers of cvmfs_server's Apache, and the geo API at
/cvmfs/<fqrn>/api/v1.0/geo/<proxy or uuid>/<host>,<host>,... Runs until SIGINT
or SIGTERM."""

EPILOG = """\
Headers: .cvmfs* files and *.json expire after 61 s, data objects after 3 days;
no Last-Modified or ETag. GET and HEAD only, single byte ranges, keep-alive.
Directories are not listed, and nothing outside ROOT is served, not even
through a symlink. A connection must send each request within 30 s; at most 512
are open (fewer under a low descriptor limit), and a new one at the limit
closes the one idle longest. The access log is Apache's combined format.

The --online FILE (JSON; file names in it relative to it):
  {"contexts": [{"name": "demo", "user_data": "#cloud-config ...",
                 (or "user_data_file": "FILE")
                 "secret": "", "root_pubkey": "ssh-ed25519 ...",
                 "owner": "demo", "pins": ["123456"],
                 "uuid": "<32 hex digits; default: from the name>"}],
   "clusters": [{"pin": "<12 of a-z, 0-9>", "keys": {"KEY": "VALUE"}}],
   "replies": {"000000": "invalid-request"},  (canned answers for a PIN)
   "pin_lifetime": 300, "cluster_lifetime": 86400}
A PIN is 6 digits; it ends in an odd digit for a context with a secret (and
its first 4 digits add up to the context's salt), else in an even one. More
PINs: GET <Online API URL>/vm/pair/<context name>.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve repositories over HTTP like a Stratum 1",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", metavar="ROOT", help="directory holding <fqrn>/ repository directories")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on, for both servers; 0.0.0.0 or :: for every interface "
                             "(default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port, 0 for any free one (default: %(default)s)")
    parser.add_argument("--geo-db", metavar="FILE",
                        help="CSV whose header line is network,latitude,longitude, one network (CIDR) a row, "
                             "for geo ordering by distance "
                             "(default: order by longest common address prefix)")
    parser.add_argument("--access-log", action="store_true",
                        help="print one line per request on stderr (both servers)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                        help="delay every request, to emulate a distant server (default: 0)")
    parser.add_argument("--online", metavar="FILE",
                        help="also serve a CernVM Online API (PIN pairing, cluster service) with the contexts "
                             "defined in FILE (JSON, below)")
    parser.add_argument("--online-port", type=int, default=8001, metavar="PORT",
                        help="TCP port of the CernVM Online API, 0 for any free one (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for option, port in (("--port", args.port), ("--online-port", args.online_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{option} {port} is not a TCP port", "use 0..65535 (0: any free port)")
    if args.latency < 0:
        raise ConfigError("--latency must not be negative")
    _check_root(Path(args.root))
    geo_db = GeoDatabase.load(args.geo_db) if args.geo_db else None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    online = OnlineService.load(args.online) if args.online else None
    with contextlib.ExitStack() as running:
        server = running.enter_context(StratumServer(args.root, args.bind, args.port, geo_db,
                                                     latency=args.latency, access_log=args.access_log))
        _tell(f"serving {args.root} on {server.url}")
        if online is not None:
            _tell(announce(running.enter_context(OnlineServer(online, args.bind, args.online_port,
                                                              access_log=args.access_log))))
        stop.wait()
    return 0


def _tell(text: str, fd: int = 1) -> None:
    """A line on stdout (or stderr), whole or not at all: a full disk or a closed pipe under it
    must not stop the server, nor leave Python a buffer it cannot flush at exit."""
    with contextlib.suppress(OSError):
        os.write(fd, os.fsencode(text + "\n"))


def _check_root(root: Path) -> None:
    """Refuse a repository given for ROOT (every request would miss); warn when ROOT holds none."""
    if (root / ".cvmfspublished").is_file():
        raise ConfigError(f"{root} is a repository itself, not the directory that holds repositories",
                          f"serve its parent: `ucernvm serve {root.resolve().parent}` serves it at "
                          f"/cvmfs/{root.resolve().name}/")
    try:
        names = os.listdir(root)
    except OSError:
        return  # not a directory: StratumServer says so
    if not any((root / name / ".cvmfspublished").is_file() for name in names):
        _tell(f"ucernvm: warning: no repository in {root} yet (no {root}/<fqrn>/.cvmfspublished): "
              "every request is answered 404 until one is published there", fd=2)
