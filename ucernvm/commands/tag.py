"""``ucernvm tag --repo REPO_DIR --name FQRN --keys DIR --add NAME|--remove NAME...``: add, move or remove tags."""

from __future__ import annotations

import argparse

from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.publisher import add_tag, remove_tags
from ucernvm.errors import ConfigError, FormatError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tag",
        help="add, move or remove named snapshots (tags) of a repository",
        description="Change the tags of the repository in REPO_DIR as cvmfs_server tag does: a new history "
        "database, and the manifest signed anew with FQRN.key; the revision and its catalogs stay as they are. "
        "`ucernvm repo tags` lists the tags.",
    )
    parser.add_argument("--repo", required=True, metavar="REPO_DIR", help="the repository directory")
    parser.add_argument("--name", required=True, metavar="FQRN", help="repository name")
    parser.add_argument("--keys", required=True, metavar="DIR", help="directory with FQRN.key, .crt and .pub")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--add", metavar="TAG",
                        help="name the current revision, or the root catalog --root-hash gives, TAG (cvmfs_server "
                        "tag -a); a TAG in use is moved only when --root-hash is given (cvmfs_server tag -a TAG -h "
                        "HASH)")
    action.add_argument("--remove", nargs="+", metavar="TAG", help="remove these tags, as cvmfs_server tag -r")
    parser.add_argument("--root-hash", metavar="HASH",
                        help="the root catalog to tag, as `ucernvm repo tags` lists them (with --add)")
    parser.add_argument("--description", default="",
                        help="description stored with the tag (with --add; default: none, or a moved tag's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.remove is not None:
        if args.root_hash or args.description:
            raise ConfigError("--root-hash and --description go with --add")
        for tag in remove_tags(args.repo, args.name, args.keys, args.remove):
            print(f"removed tag {tag.name} (revision {tag.revision}, root catalog {tag.root_hash})")
        return 0
    tag, old = add_tag(args.repo, args.name, args.keys, args.add, parse_root_hash(args.root_hash), args.description)
    if old is not None:
        print(f"moved tag {tag.name} from revision {old.revision} (root catalog {old.root_hash}) "
              f"to revision {tag.revision} (root catalog {tag.root_hash})")
    else:
        print(f"added tag {tag.name}: revision {tag.revision}, root catalog {tag.root_hash}")
    return 0


def parse_root_hash(text: str | None) -> ContentHash | None:
    if text is None:
        return None
    try:
        return ContentHash.parse(text)
    except FormatError as error:
        raise ConfigError(f"--root-hash {text!r} is not a content hash: {error.message}",
                          "give the root catalog hash of a revision, as `ucernvm repo tags` lists them") from None
