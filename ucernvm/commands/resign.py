"""``ucernvm resign --repo REPO_DIR --name FQRN --keys DIR``: renew the repository whitelist."""

from __future__ import annotations

import argparse

from ucernvm.cvmfs.publisher import resign
from ucernvm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resign",
        help="renew the whitelist (signed with the master key)",
        description="Write a fresh .cvmfswhitelist for the repository certificate in DIR, signed with "
        "FQRN.masterkey and valid for --days days. Clients refuse a repository whose whitelist expired. "
        "FQRN.crt must be the certificate the repository's manifest names: a whitelist for another one "
        "would make every client refuse the repository, so it is not written.",
    )
    parser.add_argument("--repo", required=True, metavar="REPO_DIR", help="the repository directory")
    parser.add_argument("--name", required=True, metavar="FQRN", help="repository name")
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="directory with FQRN.masterkey and FQRN.crt (FQRN.key, which publishing signs with, "
                        "is not needed)")
    parser.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.days < 1:
        raise ConfigError("--days must be at least 1: a whitelist that has expired already is refused by every client")
    whitelist = resign(args.repo, args.name, args.keys, args.days).whitelist
    print(f"whitelist of {whitelist.fqrn} renewed, expires {whitelist.expires:%Y-%m-%dT%H:%M:%SZ}")
    return 0
