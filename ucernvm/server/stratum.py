"""A Stratum 1 server: repository files under ``ROOT/<fqrn>/`` at ``/cvmfs/<fqrn>/``, plus geo API.

It mirrors what ``cvmfs_server`` configures Apache to do: ``.cvmfs*`` files (manifest,
whitelist, reflog, ...) and ``*.json`` expire after 61 s so proxies revalidate them quickly,
everything else (the content-addressed ``data/`` objects) is immutable and cached for three days,
both as mod_expires says it (``Cache-Control: max-age=N`` and ``Expires``); no ETag or
Last-Modified, and If-Modified-Since is ignored (always a full answer): cvmfs_server removes them
"because of squid bugs". HTTP/1.1 keep-alive, HEAD and single byte ranges are supported; only GET
and HEAD are allowed; one thread per connection, a bounded number of connections, each closed when
its request head is not complete in time. Repeated slashes count as one (Apache's MergeSlashes).

Safety: a request never leaves ``ROOT``. ``.``/``..`` segments (also percent-encoded) are refused,
and the file actually opened is checked to lie under ``ROOT`` after symlinks, so a symlink
pointing elsewhere is a 404. Directories are never listed. A file is served from the descriptor
opened for the request: a publish renaming a new file into place is served whole, old or new.
"""

from __future__ import annotations

import os
import re
import select
import socket
import stat
import sys
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from typing import Any
from socketserver import StreamRequestHandler, ThreadingTCPServer
from urllib.parse import unquote_to_bytes

from ucernvm.errors import ConfigError
from ucernvm.server import accesslog
from ucernvm.server.connections import IDLE_TIMEOUT, ConnectionSlots, SlotsMixIn
from ucernvm.server.geo import GeoDatabase, GeoRequestError, GeoSorter

URL_PREFIX = "/cvmfs/"
SHORT_MAX_AGE = 61  # below 60 s squid's defaults would not cache at all (cvmfs_server's comment)
OBJECT_MAX_AGE = 3 * 24 * 3600
GEO_MAX_AGE = 3600
GEO_ERROR_MAX_AGE = 300
SEND_TIMEOUT = 30.0  # seconds a client may stop reading before its connection is dropped
INLINE_BODY = 16384  # bodies up to this size go out in the same send() as the headers
MAX_LINE = 8192
MAX_HEADERS = 100

_API_PATH = re.compile(r"^api/(v[^/]*)/([^/]*)/(.*)$", re.DOTALL)
_SLASHES = re.compile(r"//+")
_RANGE = re.compile(r"^bytes=\s*(\d*)\s*-\s*(\d*)\s*$")
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO must not hang us


class StratumServer:
    """Serves the repositories under ``root`` over HTTP from a background thread.

    ``latency`` (seconds, may be changed while running) delays every request, to emulate a
    distant server. Use as ``with StratumServer(root) as server: ... server.url ...``.

    ``idle_timeout`` and ``max_connections`` bound the connections as
    :class:`~ucernvm.server.connections.ConnectionSlots` says.
    """

    def __init__(self, root: str | Path, bind: str = "127.0.0.1", port: int = 0,
                 geo_db: GeoDatabase | str | Path | None = None, *, latency: float = 0.0,
                 access_log: bool = False, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int | None = None) -> None:
        if not os.path.isdir(root):
            raise ConfigError(f"{root} is not a directory",
                              "give the directory that holds one <fqrn>/ directory per repository")
        self.root = os.path.realpath(root)
        self._root_prefix = os.path.join(self.root, "")  # what every served file's path starts with
        self.bind = bind
        self.latency = latency
        self.access_log = access_log
        if isinstance(geo_db, (str, Path)):
            geo_db = GeoDatabase.load(geo_db)
        self.geo = GeoSorter(geo_db)
        self._requested_port = port
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None
        self.slots = ConnectionSlots(idle_timeout, max_connections)

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the server is not started")
        return self._listener.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}"

    def start(self) -> StratumServer:
        if self._listener is not None:
            return self
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        try:
            self._listener = _Listener((self.bind, self._requested_port), family, self)
        except OSError as error:
            raise ConfigError(f"cannot listen on {self.bind} port {self._requested_port}: "
                              f"{error.strerror or error}",
                              "choose another --port (0 picks a free one) or --bind address") from None
        self.slots.closing.clear()  # started again after a stop
        self._thread = threading.Thread(target=self._listener.serve_forever, args=(0.1,),
                                        name=f"stratum {self.url}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (clients see the server go away)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self.slots.close_all()  # first, so that a connection waiting for a slot is refused
        listener.shutdown()
        listener.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> StratumServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Listener(SlotsMixIn, ThreadingTCPServer):
    daemon_threads = False  # server_close() joins them: stop() is clean
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], family: int, stratum: StratumServer) -> None:
        self.address_family = family
        self.stratum = stratum
        self.slots = stratum.slots
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client going away is not an error
            super().handle_error(request, client_address)


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status.phrase)
        self.status = status


class _Handler(StreamRequestHandler):
    """One connection: requests in a loop while the client keeps it alive.

    The request reader is hand-written: http.server's parses headers with the email package,
    which costs about a third of the server's time per small object.
    """

    disable_nagle_algorithm = True  # a response is one or two writes; never wait for an ACK
    timeout = SEND_TIMEOUT  # for each blocking call; a request head's deadline is the slots'
    server: _Listener

    def setup(self) -> None:
        super().setup()
        self.stratum = self.server.stratum

    def handle(self) -> None:
        try:
            while self._handle_one():
                self.stratum.slots.awaiting_request(self.connection)  # the first is due from admit()
        except OSError:
            pass  # the client went away or stayed idle too long

    def _handle_one(self) -> bool:
        """Answer one request; return whether the connection stays open."""
        self.method = self.requestline = ""
        self.headers: dict[str, str] = {}
        self.keep_alive = self.http10 = False
        self.answered: tuple[HTTPStatus, int] | None = None  # status, body length
        try:
            return self._answer()
        finally:  # logged once answered, even when the client left during the body
            if self.answered is not None and self.stratum.access_log:
                accesslog.write(accesslog.line(
                    self.client_address[0], self.requestline, self.answered[0].value, self.answered[1],
                    self.headers.get("referer"), self.headers.get("user-agent")))

    def _answer(self) -> bool:
        try:
            if not self._read_request():
                return False
            self.stratum.slots.answering(self.connection)
        except _BadRequest as error:
            self._send_text(error.status, f"{error.status.phrase}\n")
            self._linger()
            return False
        if self.stratum.latency > 0 and self.stratum.slots.closing.wait(self.stratum.latency):
            return False  # stopping: the connection is being cut, do not hold stop() up
        if self.method not in ("GET", "HEAD"):
            self.keep_alive = False  # do not bother skipping a request body
            self._send_text(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n",
                            (("Allow", "GET, HEAD"),))
            self._linger()
        else:
            self._route()
        return self.keep_alive

    def _linger(self) -> None:
        """Drain unread request bytes before closing: closing with unread input sends a TCP
        reset, which can destroy the error response before the client has read it."""
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(1.0)
        for _ in range(16):
            if not self.connection.recv(65536):
                break

    def _read_request(self) -> bool:
        """Parse the request line and headers; False on a clean end of the connection."""
        line = self.rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):  # RFC 9112 2.2: tolerate an empty line between requests
            line = self.rfile.readline(MAX_LINE + 1)
        if not line:
            return False
        if len(line) > MAX_LINE:
            raise _BadRequest(HTTPStatus.REQUEST_URI_TOO_LONG)
        self.requestline = line.rstrip(b"\r\n").decode("latin-1")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            raise _BadRequest(HTTPStatus.BAD_REQUEST)
        self.method, self.target, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n"):
                break
            if len(line) > MAX_LINE:
                raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            if not line.endswith(b"\n"):  # the connection ended inside the headers
                raise _BadRequest(HTTPStatus.BAD_REQUEST)
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not name or name != name.strip():  # also refuses obsolete folding
                raise _BadRequest(HTTPStatus.BAD_REQUEST)
            headers[name.lower()] = value.strip()
        else:
            raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        self.headers = headers
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self.http10 = version == "HTTP/1.0"
        self.keep_alive = "keep-alive" in tokens if self.http10 else "close" not in tokens
        if "content-length" in headers or "transfer-encoding" in headers:
            self.keep_alive = False  # a body we will not read would desynchronise the stream
        return True

    def _route(self) -> None:
        path = self.target.partition("?")[0]
        if not path.startswith("/"):  # absolute-form target, as sent to proxies: drop scheme and host
            _, scheme, rest = path.partition("://")
            path = "/" + rest.partition("/")[2] if scheme else ""
        if "%" in path or not path.isascii():
            # The bytes the client sent (latin-1 kept them), decoded as file names are: raw UTF-8
            # and its percent-encoding name the same file.
            path = os.fsdecode(unquote_to_bytes(path.encode("latin-1")))
        if "//" in path:
            path = _SLASHES.sub("/", path)  # as Apache's MergeSlashes: a base URL may end in '/'
        if not path.startswith(URL_PREFIX):
            self._send_text(HTTPStatus.NOT_FOUND, "Not Found\n")
            return
        relative = path[len(URL_PREFIX):]
        fqrn, _, rest = relative.partition("/")
        if rest.startswith("api/"):
            self._geo(fqrn, rest)
        else:
            self._file(relative)

    def _file(self, relative: str) -> None:
        opened = self._open(relative)
        if opened is None:
            self._send_text(HTTPStatus.NOT_FOUND, "Not Found\n")
            return
        fd, size = opened
        try:
            name = relative.rpartition("/")[2]
            if name.startswith(".cvmfs"):
                content_type, max_age = "application/x-cvmfs", SHORT_MAX_AGE
            elif name.endswith(".json"):
                content_type, max_age = "application/json", SHORT_MAX_AGE
            else:
                content_type, max_age = "application/octet-stream", OBJECT_MAX_AGE
            # What mod_expires sends ("access plus N seconds"): both headers, for HTTP/1.0 caches too.
            headers = [("Content-Type", content_type), ("Cache-Control", f"max-age={max_age}"),
                       ("Expires", _http_date(max_age)), ("Accept-Ranges", "bytes")]
            status, offset, length = self._range(size)
            if status == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
                self._send_text(status, "Range Not Satisfiable\n",
                                (("Content-Range", f"bytes */{size}"),))
                return
            if status == HTTPStatus.PARTIAL_CONTENT:
                headers.append(("Content-Range", f"bytes {offset}-{offset + length - 1}/{size}"))
            if self.method == "HEAD" or length > INLINE_BODY:
                self._send_head(status, length, headers)
                if self.method == "GET":
                    self._send_file(fd, offset, length)
            else:
                # Small objects (most of a repository): one send() for headers and body is
                # cheaper than a second system call and a second TCP segment.
                body = os.pread(fd, length, offset)
                if len(body) < length:
                    # Rewritten in place since fstat: the client must see a short body, not
                    # wait for bytes that will not come or take the next response for them.
                    self.keep_alive = False
                self._send_head(status, length, headers, body)
        finally:
            os.close(fd)

    def _open(self, relative: str) -> tuple[int, int] | None:
        """(descriptor, size) of the regular file ROOT/relative; None if missing or outside ROOT."""
        if "\0" in relative or any(part in ("", ".", "..") for part in relative.split("/")):
            return None
        root = self.stratum.root
        try:
            fd = os.open(f"{root}/{relative}", _OPEN_FLAGS)
        except OSError:
            return None
        try:
            # Where the opened file really is, symlinks resolved: one syscall, and no race.
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = os.path.realpath(f"{root}/{relative}")  # no /proc: fall back to path walking
        if real.startswith(self.stratum._root_prefix):
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                return fd, info.st_size
        os.close(fd)
        return None

    def _range(self, size: int) -> tuple[HTTPStatus, int, int]:
        """(status, offset, length) for the Range header; ignore ranges we do not serve."""
        header = self.headers.get("range")
        if header is None or "if-range" in self.headers:  # no validators: If-Range never matches
            return HTTPStatus.OK, 0, size
        match = _RANGE.match(header)
        if match is None:  # multiple ranges or another unit: serve everything (RFC 9110 14.2)
            return HTTPStatus.OK, 0, size
        first, last = (_byte_position(text) for text in match.groups())
        if first is None:
            if last is None:
                return HTTPStatus.OK, 0, size
            suffix = min(last, size)
            if suffix == 0:
                return HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, 0, 0
            return HTTPStatus.PARTIAL_CONTENT, size - suffix, suffix
        if last is not None and last < first:
            return HTTPStatus.OK, 0, size  # invalid range: ignored
        if first >= size:
            return HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, 0, 0
        end = size - 1 if last is None else min(last, size - 1)
        return HTTPStatus.PARTIAL_CONTENT, first, end - first + 1

    def _send_file(self, fd: int, offset: int, length: int) -> None:
        # socket.sendfile() polls before every chunk; try first and poll only when the send
        # buffer is full (the socket is non-blocking because it has a timeout).
        out = self.connection.fileno()
        start, end = offset, offset + length
        try:
            while offset < end:
                try:
                    sent = os.sendfile(out, fd, offset, end - offset)
                except BlockingIOError:
                    poller = select.poll()  # not select(): descriptors may exceed FD_SETSIZE
                    poller.register(out, select.POLLOUT)
                    if not poller.poll(SEND_TIMEOUT * 1000):
                        raise TimeoutError("client stopped reading") from None
                    continue
                if sent == 0:
                    raise ConnectionError("file shrank while being sent")
                offset += sent
        finally:  # the log tells what went out, as Apache's %b does for a transfer cut short
            self.answered = self.answered[0], offset - start  # type: ignore[index]

    def _geo(self, fqrn: str, rest: str) -> None:
        if fqrn in ("", ".", "..") or not os.path.isdir(f"{self.stratum.root}/{fqrn}"):
            self._send_text(HTTPStatus.NOT_FOUND, "Not Found\n")
            return
        match = _API_PATH.match(rest)
        try:
            if match is None:
                raise GeoRequestError("malformed api URL")
            if match[2] != "geo":
                raise GeoRequestError("unrecognized api function")
            body = self.stratum.geo.answer(match[3], self.client_address[0],
                                           self.headers.get("x-forwarded-for"))
        except GeoRequestError as error:
            self._send_text(HTTPStatus.BAD_REQUEST, f"Bad Request: {error}\n",
                            (("Cache-Control", f"max-age={GEO_ERROR_MAX_AGE}"),))
            return
        self._send_text(HTTPStatus.OK, body, (("Cache-Control", f"max-age={GEO_MAX_AGE}"),))

    def _send_text(self, status: HTTPStatus, text: str,
                   headers: tuple[tuple[str, str], ...] = ()) -> None:
        body = text.encode()
        self._send_head(status, len(body), [("Content-Type", "text/plain"), *headers],
                        b"" if self.method == "HEAD" else body)

    def _send_head(self, status: HTTPStatus, length: int, headers: list[tuple[str, str]],
                   body: bytes = b"") -> None:
        """Status line and headers, plus ``body`` when it is already in memory, in one write."""
        lines = [f"HTTP/1.1 {status.value} {status.phrase}",
                 "Server: ucernvm-stratum",
                 f"Date: {_http_date()}",
                 f"Content-Length: {length}"]
        lines += [f"{name}: {value}" for name, value in headers]
        if not self.keep_alive:
            lines.append("Connection: close")
        elif self.http10:
            lines.append("Connection: keep-alive")
        self.answered = status, 0 if self.method == "HEAD" else length
        self.connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _byte_position(digits: str) -> int | None:
    """A Range header's number; one longer than any file is clamped (int() refuses over 4300 digits)."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 10 ** 18


_date_cache: dict[int, tuple[int, str]] = {}  # seconds ahead -> (second, its HTTP date)


def _http_date(ahead: int = 0) -> str:
    """An HTTP date *ahead* seconds from now (Date, Expires), formatted once per second: it is on
    every response."""
    now = int(time.time())
    cached = _date_cache.get(ahead)
    if cached is None or cached[0] != now:
        cached = _date_cache[ahead] = (now, formatdate(now + ahead, usegmt=True))
    return cached[1]
