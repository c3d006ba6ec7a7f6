"""``ucernvm stat MOUNTPOINT...``: the state of running mounts, as ``cvmfs_config stat`` shows it.

Everything comes from the mount's informational extended attributes (filesystem.py), read through
the mount itself, as cvmfs's own tool does, plus the daemon's resident memory from /proc.
"""

from __future__ import annotations

import argparse
import errno
import json
import os

from ucernvm.errors import ConfigError

# Column -> the attribute behind it; cvmfs_config stat's columns and units, FQRN first (one row per mount).
COLUMNS = {
    "FQRN": "user.fqrn",
    "VERSION": "user.version",
    "PID": "user.pid",
    "UPTIME(M)": "user.uptime",
    "MEM(K)": "",  # the daemon's resident set, from /proc
    "REVISION": "user.revision",
    "EXPIRES(M)": "user.expires",
    "NOCATALOGS": "user.nclg",
    "CACHEUSE(K)": "user.cache_use",
    "CACHEMAX(K)": "user.cache_max",
    "NOFDUSE": "user.usedfd",
    "NOFDMAX": "user.maxfd",
    "NOIOERR": "user.nioerr",
    "NOOPEN": "user.nopen",
    "HITRATE(%)": "user.hitrate",
    "RX(K)": "user.rx",
    "SPEED(K/S)": "user.speed",
    "HOST": "user.host",
    "PROXY": "user.proxy",
    "ONLINE": "user.offline",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "stat",
        help="show the state of running mounts (as cvmfs_config stat)",
        description="For each MOUNTPOINT mounted by `ucernvm mount`, print cvmfs_config stat's columns: "
        "version, daemon pid, uptime, memory, revision, expiry, loaded catalogs, cache use and quota (-1: "
        "none), open files and the most there may be, I/O errors, files opened, cache hit rate, bytes "
        "received, download speed, server, proxy, online. A value the mount does not know (no HTTP source: "
        "no transfers; no cache) is '-'.",
    )
    parser.add_argument("mountpoints", nargs="+", metavar="MOUNTPOINT")
    parser.add_argument("--json", action="store_true", help="one object per mount, keyed by column")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = [mount_state(path) for path in args.mountpoints]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(" ".join(COLUMNS))
        for row in rows:
            print(" ".join(row[column] for column in COLUMNS))
    return 0


def mount_state(path: str) -> dict[str, str]:
    """The columns of one mount; ConfigError when ``path`` is not a ucernvm mount."""
    try:
        fqrn = os.getxattr(path, "user.fqrn").decode()
    except OSError as error:
        if error.errno == errno.ENODATA:
            raise ConfigError(f"{path} is not mounted by `ucernvm mount`", "give the mount point of a snapshot") from None
        if error.errno == errno.ENOTSUP:
            raise ConfigError(f"{path} answers no extended attributes: not a ucernvm mount, or one with them off",
                              "a boot turns them off for a snapshot that stores none; ucernvm.xattrs=on keeps them") from None
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    row = {column: _attribute(path, name) for column, name in COLUMNS.items() if name and column != "FQRN"}
    row["FQRN"] = fqrn
    row["MEM(K)"] = _resident_kib(row["PID"])
    row["EXPIRES(M)"] = row["EXPIRES(M)"].split()[0]  # "never (fixed root catalog)": one column
    row["ONLINE"] = {"0": "1", "1": "0"}.get(row["ONLINE"], "-")
    return {column: row[column] for column in COLUMNS}


def _attribute(path: str, name: str) -> str:
    try:
        return os.getxattr(path, name).decode()
    except OSError:
        return "-"


def _resident_kib(pid: str) -> str:
    try:
        with open(f"/proc/{int(pid)}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return line.split()[1]
    except (OSError, ValueError):
        pass
    return "-"
