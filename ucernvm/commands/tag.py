"""``ucernvm tag --repo REPO_DIR --name FQRN --keys DIR [-a TAG | -r TAG... | -i TAG | -l] [-x]``: list, inspect,
add, move or remove tags, as ``cvmfs_server tag`` does."""

from __future__ import annotations

import argparse

from ucernvm.commands.repo import epoch_time
from ucernvm.cvmfs.hashing import ContentHash
from ucernvm.cvmfs.history import Tag
from ucernvm.cvmfs.publisher import add_tag, published_tags, remove_tags
from ucernvm.errors import ConfigError, FormatError
from ucernvm.utc import utc_time

DEFAULT_BRANCH = "(default)"  # how cvmfs's machine-readable lines name the branch ''


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tag",
        help="list, inspect, add, move or remove named snapshots (tags) of a repository",
        description="The tags of the repository in REPO_DIR, as cvmfs_server tag: without an action, or with "
        "-l, a table of them; -i one tag's details; -x either as lines for scripts. Adding, moving or removing "
        "writes a new history database and signs the manifest anew with FQRN.key; the revision and its "
        "catalogs stay as they are, and so does /.cvmfs/snapshots (publish --virtual-dir) until the next "
        "publish, where cvmfs_server tag remakes it at once in a new revision. Listing and inspecting read the "
        "repository, verified with FQRN.pub alone.",
    )
    parser.add_argument("--repo", required=True, metavar="REPO_DIR", help="the repository directory")
    parser.add_argument("--name", required=True, metavar="FQRN", help="repository name")
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="directory with FQRN.pub, and to change tags FQRN.key and FQRN.crt")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-l", "--list", action="store_true",
                        help="list the tags, oldest first (the default action; cvmfs_server tag -l)")
    action.add_argument("-i", "--inspect", metavar="TAG",
                        help="print one tag's revision, time, branch, root catalog, its size and description "
                        "(cvmfs_server tag -i)")
    action.add_argument("-a", "--add", metavar="TAG",
                        help="name the current revision, or the root catalog --root-hash gives, TAG (cvmfs_server "
                        "tag -a); a TAG in use is moved only when --root-hash is given (cvmfs_server tag -a TAG -h "
                        "HASH)")
    action.add_argument("-r", "--remove", nargs="+", metavar="TAG",
                        help="remove these tags, without asking (cvmfs_server tag -r TAG -f)")
    parser.add_argument("-x", "--machine-readable", action="store_true",
                        help="with -l or -i: one line a tag, 'NAME ROOT_HASH CATALOG_SIZE REVISION UNIX_TIME "
                        f"BRANCH DESCRIPTION', separated by spaces, the default branch as {DEFAULT_BRANCH}, "
                        "newest first (cvmfs_server tag -x)")
    parser.add_argument("--now", type=epoch_time, metavar="EPOCH",
                        help="with -l or -i: verify as of this Unix time, as `ucernvm repo --now`, to read the tags "
                        "of a repository whose whitelist expired (which tag refuses otherwise, as cvmfs_server tag)")
    parser.add_argument("--root-hash", metavar="HASH",
                        help="with --add: the root catalog to tag, as `ucernvm tag -l -x` lists them "
                        "(cvmfs_server tag -h)")
    parser.add_argument("-m", "--description", default="",
                        help="with --add: description stored with the tag (default: none, or a moved tag's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    changing = args.add is not None or args.remove is not None
    if args.machine_readable and changing:
        raise ConfigError("-x goes with -l or -i", "it chooses how tags are listed or inspected")
    if args.add is None and (args.root_hash or args.description):
        raise ConfigError("--root-hash and --description go with --add")
    if changing and args.now is not None:
        raise ConfigError("--now goes with -l or -i", "tags are changed only in a repository that verifies now")
    if args.remove is not None:
        for tag in remove_tags(args.repo, args.name, args.keys, args.remove):
            print(f"removed tag {tag.name} (revision {tag.revision}, root catalog {tag.root_hash})")
    elif args.add is not None:
        tag, old = add_tag(args.repo, args.name, args.keys, args.add, parse_root_hash(args.root_hash),
                           args.description)
        if old is not None:
            print(f"moved tag {tag.name} from revision {old.revision} (root catalog {old.root_hash}) "
                  f"to revision {tag.revision} (root catalog {tag.root_hash})")
        else:
            print(f"added tag {tag.name}: revision {tag.revision}, root catalog {tag.root_hash}")
    elif args.inspect is not None:
        print(inspect(find(published_tags(args.repo, args.name, args.keys, args.now), args.inspect, args.name),
                      args.machine_readable))
    else:
        tags = published_tags(args.repo, args.name, args.keys, args.now)
        print("\n".join(map(machine_line, tags)) if args.machine_readable else table(tags))
    return 0


def find(tags: list[Tag], name: str, fqrn: str) -> Tag:
    found = next((tag for tag in tags if tag.name == name), None)
    if found is None:
        raise ConfigError(f"the repository {fqrn} has no tag {name!r}", "`ucernvm tag -l` lists them")
    return found


def machine_line(tag: Tag) -> str:
    """A tag as cvmfs_server tag -x prints it."""
    return (f"{tag.name} {tag.root_hash} {tag.size} {tag.revision} {tag.timestamp} "
            f"{tag.branch or DEFAULT_BRANCH} {tag.description}")


def inspect(tag: Tag, machine_readable: bool) -> str:
    """A tag's details, as cvmfs_server tag -i prints them (the description labelled)."""
    if machine_readable:
        return machine_line(tag)
    return "\n".join([
        f"Name:         {tag.name}",
        f"Revision:     {tag.revision}",
        f"Timestamp:    {utc_time(tag.timestamp)}",
        f"Branch:       {tag.branch}",
        f"Root Hash:    {tag.root_hash}",
        f"Catalog Size: {human_size(tag.size)}",
        f"Description:  {tag.description}",
    ])


def human_size(size: int) -> str:
    """A size as cvmfs_server tag -i writes a catalog's: in the largest binary unit it exceeds."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("kiB", 1 << 10)):
        if size > scale:
            return f"{size / scale:.3f} {unit}"
    return f"{size} Byte"


def table(tags: list[Tag]) -> str:
    """The tags as cvmfs_server tag -l lays them out: oldest first, in columns, and their count."""
    header = ("Name", "Revision", "Timestamp", "Branch", "Description")
    rows = [(tag.name, str(tag.revision), utc_time(tag.timestamp), tag.branch, tag.description)
            for tag in reversed(tags)]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(4)]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2]), row[3].ljust(widths[3])]
        return " \u2502 ".join([*cells, row[4]]).rstrip()

    def rule(joint: str) -> str:
        return f"\u2500{joint}\u2500".join("\u2500" * width for width in [*widths, len(header[4]) + 1])

    return "\n".join([line(header), rule("\u253c"), *map(line, rows), rule("\u2534"),
                      f"listing contains {len(tags)} tags"])


def parse_root_hash(text: str | None) -> ContentHash | None:
    if text is None:
        return None
    try:
        return ContentHash.parse(text)
    except FormatError as error:
        raise ConfigError(f"--root-hash {text!r} is not a content hash: {error.message}",
                          "give the root catalog hash of a revision, as `ucernvm tag -l -x` lists them") from None
