"""``ucernvm keygen FQRN --keys DIR``: create a repository's master key, signing key and certificate."""

from __future__ import annotations

import argparse

from ucernvm.client.repository import check_fqrn
from ucernvm.cvmfs.signing import generate_repository_keys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create the keys of a new repository",
        description="Write FQRN.masterkey (keep it offline), FQRN.pub (give it to clients), FQRN.key and "
        "FQRN.crt (the signing key and its self-signed certificate) into DIR, as cvmfs_server mkfs makes them "
        "in /etc/cvmfs/keys.",
    )
    parser.add_argument("fqrn", metavar="FQRN", help="repository name, e.g. cernvm-prod.cern.ch")
    parser.add_argument("--keys", required=True, metavar="DIR", help="directory for the key files")
    parser.add_argument("--force", action="store_true",
                        help="replace existing key files (a new master key: clients that trust the old FQRN.pub "
                        "refuse the repository)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_fqrn(args.fqrn)  # it names the key files: a path in its place would write them anywhere
    for path in generate_repository_keys(args.fqrn, args.keys, overwrite=args.force).values():
        print(path)
    return 0
