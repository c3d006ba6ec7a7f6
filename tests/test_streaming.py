"""Objects stream from the wire into the cache: inflated and hashed piece by piece, memory bounded by a
piece, nothing kept that did not match its hash, a download that fails half way started over elsewhere."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import pytest

from faults import Fault, FaultServer
from helpers import PROJECT
from ucernvm.client.cache import ObjectCache
from ucernvm.client.fetcher import HttpSource
from ucernvm.client.repository import Repository
from ucernvm.client.sinks import INFLATE_BLOCK, Checked, Inflating, Memory, Sized
from ucernvm.client.sources import DirectorySource
from ucernvm.cvmfs.chunking import ChunkingParams
from ucernvm.cvmfs.hashing import ContentHash, ObjectType
from ucernvm.cvmfs.ingest import IngestOptions
from ucernvm.cvmfs.publisher import Publisher, PublishOptions
from ucernvm.cvmfs.trust import load_master_keys
from ucernvm.errors import FormatError, VerificationError
from ucernvm.server import StratumServer

FQRN = "test.cern.ch"
BIG = 24 << 20


def _big_file() -> bytes:
    """Half random, half repeated: it compresses to ~60 %, so its stream is many pieces and blocks."""
    rng = random.Random(11)
    pattern = rng.randbytes(4096)
    return b"".join(rng.randbytes(32768) + pattern * 8 for _ in range(BIG // 65536))


@pytest.fixture(scope="module")
def stored_whole(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Path:
    """A repository whose big file is one object (stored whole, not chunked)."""
    tree = tmp_path_factory.mktemp("tree")
    (tree / "big").write_bytes(_big_file())
    root = tmp_path_factory.mktemp("stratum")
    options = PublishOptions(workers=1, ingest=IngestOptions(chunking=None))
    Publisher(str(root / FQRN), FQRN, str(keys_dir), options).publish(str(tree))
    return root


def _repository(urls: list[str], keys_dir: Path, cache: ObjectCache) -> Repository:
    return Repository(HttpSource(urls), FQRN, load_master_keys(keys_dir / f"{FQRN}.pub"), cache=cache)


def _open_big(repository: Repository) -> int:
    entry = repository.entry("/big")
    (chunk,) = repository.chunks("/big", entry)
    return repository.open_chunk(entry, chunk)


def _read(fd: int) -> bytes:
    try:
        return os.pread(fd, BIG + 1, 0)
    finally:
        os.close(fd)


def test_a_large_object_reaches_the_cache_with_memory_bounded_by_a_piece(
        stored_whole: Path, keys_dir: Path, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    with StratumServer(stored_whole) as server:
        repository = _repository([f"{server.url}/cvmfs/{FQRN}"], keys_dir, cache)
        stored = (stored_whole / FQRN / repository.entry("/big").content_hash.object_path()).stat().st_size
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            fd = _open_big(repository)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert _read(fd) == _big_file()
    assert stored > 8 * INFLATE_BLOCK  # many pieces on the wire
    # Held whole, the object would have taken its stored and its inflated size at once (~40 MiB).
    assert peak < 6 * INFLATE_BLOCK, f"{peak} bytes allocated at the peak"
    assert not os.listdir(cache.root / "txn")


@pytest.mark.parametrize("fault", [Fault.corrupt(), Fault.truncate()], ids=["corrupt", "truncated"])
def test_a_large_object_broken_on_one_server_is_read_whole_from_the_next(
        stored_whole: Path, keys_dir: Path, tmp_path: Path, fault: Fault) -> None:
    """The first server's pieces were inflated into the cache's file already: they are dropped, the
    download starts over, and the file holds exactly the good server's object."""
    cache = ObjectCache(tmp_path / "cache")
    with FaultServer(stored_whole) as bad, StratumServer(stored_whole) as good:
        repository = _repository([f"{bad.url}/cvmfs/{FQRN}", f"{good.url}/cvmfs/{FQRN}"], keys_dir, cache)
        bad.inject("/data/", fault)
        assert _read(_open_big(repository)) == _big_file()
        assert bad.count("/data/") >= 1 and repository.source.current_host.startswith(good.url)
    assert not os.listdir(cache.root / "txn")


def _stored_object(tmp_path: Path, stored: bytes) -> tuple[DirectorySource, ContentHash]:
    """A repository directory holding one object whose name is the hash of ``stored``, however made."""
    tmp_path.mkdir()
    (tmp_path / ".cvmfspublished").write_bytes(b"")
    content_hash = ContentHash.of(stored)
    path = tmp_path / content_hash.object_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(stored)
    return DirectorySource(tmp_path), content_hash


@pytest.mark.parametrize(("stored", "size", "message"), [
    (zlib.compress(os.urandom(3 << 20))[:-1000], None, "truncated"),
    (zlib.compress(b"abc") + b"junk", None, "trailing bytes"),
    (zlib.compress(b"abc"), 4, "to 3 bytes, expected 4"),
    (zlib.compress(bytes(200 << 20)), 1000, "more than the 1000 bytes expected"),
])
def test_an_object_published_broken_is_a_format_error_and_is_not_cached(
        tmp_path: Path, stored: bytes, size: int | None, message: str) -> None:
    """Its hash matches (the publisher stored it so): no server has a better copy, the error says what is wrong."""
    source, content_hash = _stored_object(tmp_path / "stratum", stored)
    cache = ObjectCache(tmp_path / "cache")
    with pytest.raises(FormatError, match=message):
        cache.open(content_hash, lambda out: source.fetch_object(content_hash, ObjectType.FILE, Inflating(out, size)))
    assert not os.listdir(cache.root / "txn") and not (cache.root / content_hash.hex[:2]).exists()


# --- the sinks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [1, 4093, 1 << 20, None])
@pytest.mark.parametrize("plain", [b"", b"x", bytes(3 * INFLATE_BLOCK + 5), os.urandom(INFLATE_BLOCK + 1)],
                         ids=["empty", "one byte", "zeros", "random"])
def test_inflating_gives_the_same_bytes_whatever_the_pieces(piece: int | None, plain: bytes) -> None:
    stored = zlib.compress(plain, 6)
    out = Memory()
    inflating = Inflating(out, len(plain))
    step = piece or len(stored)
    for start in range(0, len(stored), step):
        inflating.write(stored[start:start + step])
    inflating.finish()
    assert out.value() == plain


def test_a_restart_forgets_what_was_written() -> None:
    plain = os.urandom(100_000)
    stored = zlib.compress(plain)
    out = Memory()
    inflating = Inflating(out, len(plain))
    inflating.write(stored[:30_000])
    inflating.restart()
    inflating.write(stored)
    inflating.finish()
    assert out.value() == plain


def test_stored_as_is_is_sized() -> None:
    out = Memory()
    sized = Sized(out, 3)
    sized.write(b"ab")
    with pytest.raises(FormatError, match="has 2 bytes, expected 3"):
        sized.finish()
    with pytest.raises(FormatError, match="more than the 3 bytes"):
        sized.write(b"cd")


def test_a_body_that_does_not_inflate_is_refused_at_once() -> None:
    """Its first piece already fails: the rest of it cannot mend it, and is not waited for."""
    plain = os.urandom(1000)
    garbage = b"\xff" * 100
    body = Checked(Inflating(Memory(), len(plain)), ContentHash.of(zlib.compress(plain)))
    with pytest.raises(FormatError, match="does not decompress"):
        body.write(garbage)


def test_without_a_size_nothing_is_inflated_before_the_hash_matched() -> None:
    """A stream of unknown size could inflate without bound: it is held until ``finish``, which only a
    body that matched its hash reaches."""
    bomb = zlib.compress(bytes(64 << 20))
    out = Memory()
    inflating = Inflating(out, None)
    body = Checked(inflating, ContentHash.of(b"something else"))
    body.write(bomb)
    assert out.value() == b"" and not body.matches()  # not inflated: refused unopened
    held = Inflating(Memory(), None)
    held.write(zlib.compress(b"a catalog"))
    held.finish()


def test_a_named_file_larger_than_its_limit_is_refused() -> None:
    body = Memory(limit=10)
    body.write(b"0123456789")
    with pytest.raises(FormatError, match="more than the 10 bytes"):
        body.write(b"!")


def test_an_object_that_does_not_inflate_on_any_server_says_so(
        stored_whole: Path, keys_dir: Path, tmp_path: Path) -> None:
    cache = ObjectCache(tmp_path / "cache")
    with FaultServer(stored_whole) as one, FaultServer(stored_whole) as two:
        repository = _repository([f"{one.url}/cvmfs/{FQRN}", f"{two.url}/cvmfs/{FQRN}"], keys_dir, cache)
        big = repository.entry("/big").content_hash.object_path()  # the catalogs are in: the faults hit only big
        for server in (one, two):
            server.inject(big, Fault.garbage())
        with pytest.raises(VerificationError, match=r"is corrupt \(object does not decompress"):
            _open_big(repository)
        assert [server.count(big) for server in (one, two)] == [2, 2]  # each once more without caches
    assert not os.listdir(cache.root / "txn")


def test_a_small_object_is_checked_without_loading_openssl() -> None:
    script = ("import sys\n"
              "from ucernvm.client.sinks import Checked, Memory\n"
              "from ucernvm.cvmfs.hashing import ContentHash\n"
              "body = Checked(Memory(), ContentHash.of(b'small object'))\n"
              "body.write(b'small object')\n"
              "assert body.matches()\n"
              "print('_hashlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _bytes_read() -> int:
    """What this process has read so far with read(2) and its kin, from any file (rchar)."""
    counters = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(counters["rchar"])


def test_a_local_repositorys_object_is_read_once(tmp_path: Path) -> None:
    """Hashed on its way to the sink, as a download is, not hashed whole first and read again."""
    plain = os.urandom(8 << 20)
    stored = zlib.compress(plain)
    source, content_hash = _stored_object(tmp_path / "stratum", stored)
    out = Memory()
    before = _bytes_read()
    source.fetch_object(content_hash, ObjectType.FILE, Inflating(out, len(plain)))
    read = _bytes_read() - before
    assert out.value() == plain
    assert len(stored) <= read < 1.25 * len(stored)
