"""Turning file contents into stored objects: chunk, compress, hash, and store what is new."""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ucernvm.cvmfs.compression import Compression
from ucernvm.cvmfs.catalog import Chunk
from ucernvm.cvmfs.chunking import ChunkingParams, iter_chunks
from ucernvm.cvmfs.hashing import ContentHash, HashAlgorithm, ObjectType
from ucernvm.cvmfs.storage import RepositoryStorage
from ucernvm.errors import ConfigError


@dataclass(frozen=True, slots=True)
class FileContent:
    """Where a regular file's bytes went: one object, or a list of chunks."""

    size: int
    content_hash: ContentHash | None
    chunks: tuple[Chunk, ...] = ()
    compressed: bool = True


@dataclass(frozen=True)
class IngestOptions:
    chunking: ChunkingParams | None = ChunkingParams()
    compression: Compression = Compression.FAST
    algorithm: HashAlgorithm = HashAlgorithm.SHA1


_FILE_DATA = (ObjectType.FILE, ObjectType.PARTIAL)


class IngestStats:
    """Counters shared by the worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.objects_written = 0
        self.bytes_written = 0

    def add(self, bytes_in: int, written: int) -> None:
        with self._lock:
            self.bytes_in += bytes_in
            if written:
                self.objects_written += 1
                self.bytes_written += written


class Ingester:
    """Stores objects; the chunks of a large file are compressed and stored by a pool of workers.

    The pool is separate from whatever runs ``ingest_file`` in parallel, so a file waiting for its
    chunks never holds a worker its chunks need; a semaphore bounds the chunks held in memory.
    """

    def __init__(self, storage: RepositoryStorage, options: IngestOptions, workers: int = 1) -> None:
        self.storage = storage
        self.options = options
        self.stats = IngestStats()
        self._pieces = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="chunk")
        self._in_flight = threading.BoundedSemaphore(2 * max(1, workers))

    def close(self) -> None:
        self._pieces.shutdown()

    def __enter__(self) -> Ingester:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def store(self, plain: bytes, object_type: ObjectType, compress: bool = True) -> ContentHash:
        """Store one object (always zlib for catalogs, history and certificates) and return its hash."""
        stored = self.options.compression.compress(plain) if compress else plain
        content_hash = ContentHash.of(stored, self.options.algorithm)
        written = self.storage.put_object(content_hash, object_type, stored)
        # The bytes read count the files' contents: catalogs, history and certificate are made, not read.
        self.stats.add(len(plain) if object_type in _FILE_DATA else 0, len(stored) if written else 0)
        return content_hash

    def _store_piece(self, piece: bytes, compress: bool) -> Future[ContentHash]:
        self._in_flight.acquire()
        future = self._pieces.submit(self.store, piece, ObjectType.PARTIAL, compress)
        future.add_done_callback(lambda _: self._in_flight.release())
        return future

    def ingest_file(self, fs_path: str) -> FileContent:
        compress = self.options.compression is not Compression.NONE
        params = self.options.chunking
        try:
            with open(fs_path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if params is None or not params.might_chunk(size):
                    data = handle.read()
                    return FileContent(len(data), self.store(data, ObjectType.FILE, compress), (), compress)
                pieces = iter_chunks(handle, params)
                first = next(pieces, b"")
                if len(first) == size:
                    # A file that chunking leaves in one piece is stored as an ordinary file (as cvmfs does).
                    return FileContent(size, self.store(first, ObjectType.FILE, compress), (), compress)
                pending: list[tuple[int, int, Future[ContentHash]]] = []
                offset = 0
                for piece in itertools.chain([first], pieces):
                    pending.append((offset, len(piece), self._store_piece(piece, compress)))
                    offset += len(piece)
        except OSError as error:
            raise ConfigError(f"cannot read {fs_path}: {error.strerror}") from None
        chunks = tuple(Chunk(start, length, future.result()) for start, length, future in pending)
        return FileContent(offset, None, chunks, compress)
