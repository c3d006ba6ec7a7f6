"""``ucernvm resign --repo REPO_DIR --name FQRN --keys DIR``: renew the repository whitelist."""

from __future__ import annotations

import argparse

from ucernvm.cvmfs.publisher import resign
from ucernvm.cvmfs.signing import key_paths
from ucernvm.errors import ConfigError
from ucernvm.utc import utc_time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "resign",
        help="renew the whitelist (signed with the master key)",
        description="Write a fresh .cvmfswhitelist for the repository certificate in DIR, signed with "
        "FQRN.masterkey and valid for --days days, as cvmfs_server resign. Clients refuse a repository whose "
        "whitelist expired. A FQRN.crt other than the certificate the published revision is signed with (a new "
        "one) is listed beside that one, which clients go on looking up: publish with the new one, then resign "
        "again to list it alone.",
    )
    parser.add_argument("--repo", required=True, metavar="REPO_DIR", help="the repository directory")
    parser.add_argument("--name", required=True, metavar="FQRN", help="repository name")
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="directory with FQRN.masterkey and FQRN.crt (FQRN.key, which publishing signs with, "
                        "is not needed)")
    parser.add_argument("-d", "--days", type=int, default=30,
                        help="validity in days (default 30; cvmfs_server resign -d)")
    parser.set_defaults(func=run)


def check_days(days: int) -> None:
    """Refuse a whitelist validity (``--days``, as resign and publish take it) that no client would accept."""
    if days < 1:
        raise ConfigError("--days must be at least 1: a whitelist that has expired already is refused by every client")


def run(args: argparse.Namespace) -> int:
    check_days(args.days)
    whitelist = resign(args.repo, args.name, args.keys, args.days).whitelist
    print(f"whitelist of {whitelist.fqrn} renewed, expires {utc_time(whitelist.expires.timestamp())}")
    if len(whitelist.fingerprints) > 1:
        print(f"it lists {key_paths(args.keys, args.name)['crt']} beside the certificate the published revision is "
              "signed with: publish with the new one, then resign again to list it alone")
    return 0
