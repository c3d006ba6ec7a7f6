"""Plain-HTTP/1.1 GET over kept-alive connections: the fetcher's hot path, made cheap.

Written here rather than used from urllib3 (which stays for https and everything else) because of
what one request costs in CPU: urllib3 on http.client parses every response's headers with the
email package, ~0.6 ms per object natively against ~0.08 ms for this module, and the boot loader's
FUSE daemon makes thousands of requests while the OS starts, under emulation 10-20x slower still
(docs/benchmarks.md). CernVM-FS objects are plain HTTP in practice (their content hash is the
security), so this covers the requests that count: GET (and the body-less PUT of a metadata
service's token), directly or through an HTTP proxy (absolute-form target), bodies framed by Content-Length, chunked encoding or the connection's end,
redirect responses returned to the caller, a connection reused only when its last body was read
whole. Failures are raised as ``HttpFailure`` with the kind the fetcher's failover needs.
"""

from __future__ import annotations

import select
import socket
import threading
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import at boot, where this module runs
    from typing import BinaryIO

MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


class HttpFailure(Exception):
    """A request that got no usable response; ``kind``: resolve, connection, slow or short."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Headers(dict):
    """Response headers by lower-case name (the last of repeated ones); lookups ignore case."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """Status, headers and the body as a stream; ``release_conn`` after the last ``read1``."""

    def __init__(self, pool: ConnectionPool, address: tuple[str, int], sock: socket.socket, reader: BinaryIO,
                 status: int, headers: Headers, length: int | None, chunked: bool, reusable: bool) -> None:
        self.status = status
        self.headers = headers
        self._pool = pool
        self._address = address
        self._sock: socket.socket | None = sock
        self._reader = reader
        self._left = length  # bytes of body (or of the current chunk) still to come; None: until EOF
        self._chunked = chunked
        self._reusable = reusable
        self._done = length == 0 and not chunked

    def read1(self, size: int) -> bytes:
        """Up to ``size`` bytes of body, b"" at its end; TimeoutError on a stall, HttpFailure if cut short."""
        if self._done:
            return b""
        if self._chunked and not self._left:
            self._left = self._next_chunk()
            if self._left == 0:
                self._done = True
                return b""
        wanted = size if self._left is None else min(size, self._left)
        data = self._reader.read1(wanted)
        if not data:
            if self._left is None and not self._chunked:
                self._done = True  # framed by the connection's end
                self._reusable = False
                return b""
            raise HttpFailure("short", "the connection closed before the end of the body")
        if self._left is not None:
            self._left -= len(data)
            if self._left == 0 and not self._chunked:
                self._done = True
            elif self._left == 0:
                self._expect_line_end()
        return data

    def _next_chunk(self) -> int:
        line = self._reader.readline(MAX_HEADER_LINE)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            size = -1
        if size < 0:
            raise HttpFailure("short", "malformed chunk in the body")
        if size == 0:  # trailers, then the empty line
            while self._reader.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n", b""):
                pass
        return size

    def _expect_line_end(self) -> None:
        if self._reader.readline(MAX_HEADER_LINE) not in (b"\r\n", b"\n"):
            raise HttpFailure("short", "malformed chunk in the body")

    def release_conn(self) -> None:
        """Give the connection back for the next request if this body was read whole, else close it."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._done and self._reusable:
            self._pool.put(self._address, sock, self._reader)
        else:
            _close(sock, self._reader)

    def close(self) -> None:
        self._done, self._reusable = True, False
        self.release_conn()


class ConnectionPool:
    """Idle connections per (host, port), shared by threads; at most ``maxsize`` kept per address."""

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = maxsize
        self._idle: dict[tuple[str, int], list[tuple[socket.socket, BinaryIO]]] = {}
        self._lock = threading.Lock()

    def request(self, method: str, url: str, headers: dict[str, str], timeout: float,
                proxy: str | None = None) -> Response:
        """``method`` (without a body) on ``url`` (``http://``), through the HTTP ``proxy`` if given.

        ``timeout`` bounds the connect and every wait for data; a redirect is a response like any.
        """
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain HTTP URL: {url!r}")
        host_header = parts.netloc.rpartition("@")[2]
        if proxy is None:
            address = (parts.hostname, parts.port or 80)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        else:
            proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            address = (proxy_parts.hostname or "", proxy_parts.port or 80)
            target = url.split("#", 1)[0]
        length = "" if method in ("GET", "HEAD") else "Content-Length: 0\r\n"
        request = "".join((f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n{length}",
                           *(f"{name}: {value}\r\n" for name, value in headers.items()), "\r\n")).encode("latin-1")
        for reused in (True, False):
            connection = self._take(address) if reused else None
            if reused and connection is None:
                continue
            sock, reader = connection or self._connect(address, timeout)
            try:
                sock.settimeout(timeout)
                sock.sendall(request)
                return self._response(address, sock, reader)
            except _Dropped as dropped:
                _close(sock, reader)
                if not reused:
                    raise HttpFailure("short", str(dropped)) from None
            except TimeoutError:
                _close(sock, reader)
                raise HttpFailure("slow", f"no response for {timeout:g} s") from None
            except HttpFailure:
                _close(sock, reader)
                raise
            except OSError as error:
                _close(sock, reader)
                if not reused:
                    raise HttpFailure("short", f"connection dropped: {error.strerror or error}") from None
            # a kept-alive connection the peer had closed meanwhile: once more on a new one
        raise AssertionError("unreachable")

    def put(self, address: tuple[str, int], sock: socket.socket, reader: BinaryIO) -> None:
        with self._lock:
            idle = self._idle.setdefault(address, [])
            if len(idle) < self.maxsize:
                idle.append((sock, reader))
                return
        _close(sock, reader)

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for sock, reader in connections:
                _close(sock, reader)

    def _take(self, address: tuple[str, int]) -> tuple[socket.socket, BinaryIO] | None:
        while True:
            with self._lock:
                connections = self._idle.get(address)
                if not connections:
                    return None
                sock, reader = connections.pop()
            # Readable while idle means closed by the peer (or garbage): not worth a request.
            # poll, not select: the FUSE daemon holds many descriptors, and select fails above 1023.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return sock, reader
            _close(sock, reader)

    @staticmethod
    def _connect(address: tuple[str, int], timeout: float) -> tuple[socket.socket, BinaryIO]:
        try:
            sock = socket.create_connection(address, timeout=timeout)
        except socket.gaierror:
            raise HttpFailure("resolve", "name does not resolve") from None
        except TimeoutError:
            raise HttpFailure("slow", "timed out") from None
        except OSError as error:
            raise HttpFailure("connection", f"cannot connect: {error.strerror or error}") from None
        # Small requests would wait for delayed ACKs (Nagle) without this.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, sock.makefile("rb")

    def _response(self, address: tuple[str, int], sock: socket.socket, reader: BinaryIO) -> Response:
        while True:
            line = reader.readline(MAX_HEADER_LINE)
            if not line:
                raise _Dropped("the connection closed without a response")
            version, _, rest = line.partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                # On a kept-alive connection, what a server sent past the last body's end (as curl, which then
                # closes it): the request goes again on a new connection.
                raise _Dropped(f"not an HTTP response: {line[:40]!r}")
            status = int(code)
            headers = Headers()
            for _ in range(MAX_HEADERS + 1):
                line = reader.readline(MAX_HEADER_LINE)
                if line in (b"\r\n", b"\n"):
                    break
                name, colon, value = line.partition(b":")
                if not colon:
                    raise HttpFailure("short", "malformed response header")
                headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
            else:
                raise HttpFailure("short", "too many response headers")
            if status >= 200:
                break  # 1xx: an interim response, the real one follows
        connection = headers.get("connection", "").lower()
        reusable = "close" not in connection and (version != b"HTTP/1.0" or "keep-alive" in connection)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length: int | None = 0 if status in (204, 304) else None
        if length is None and not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length = -1
            if length < 0:
                raise HttpFailure("short", "malformed Content-Length")
        return Response(self, address, sock, reader, status, headers, length, chunked, reusable)


class _Dropped(Exception):
    """The connection ended, or gave something else, before a status line."""


def _close(sock: socket.socket, reader: BinaryIO) -> None:
    try:
        reader.close()
    finally:
        sock.close()
