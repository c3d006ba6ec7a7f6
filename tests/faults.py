"""A small HTTP/1.1 server on 127.0.0.1 whose answers can be made to fail, for the fetcher tests.

It serves the files under ``root`` (``/cvmfs/<fqrn>/x`` and ``/x`` are ``root/<fqrn>/x`` and
``root/x``), also when asked as a proxy (absolute URLs), and records every request. Faults are
injected per URL substring, optionally for a number of requests only::

    with FaultServer(root) as server:
        server.inject("/data/", Fault.corrupt(), times=1)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Fault:
    kind: str  # status, hang, stall, trickle, truncate, redirect, corrupt, garbage, wait
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    other: str = ""  # wait: the request that must arrive too

    @classmethod
    def status_code(cls, code: int, **headers: str) -> Fault:
        """An error answer (``X_Squid_Error="..."`` becomes the header ``X-Squid-Error``)."""
        return cls("status", code, tuple((k.replace("_", "-"), v) for k, v in headers.items()))

    @classmethod
    def hang(cls) -> Fault:
        """Read the request, never answer."""
        return cls("hang")

    @classmethod
    def stall(cls) -> Fault:
        """Send the headers and half the body, then nothing."""
        return cls("stall")

    @classmethod
    def trickle(cls, rate: int = 200) -> Fault:
        """Send the body at about ``rate`` bytes/s (in 20 pieces a second)."""
        return cls("trickle", rate)

    @classmethod
    def truncate(cls) -> Fault:
        """Announce the full length, send half the body and close."""
        return cls("truncate")

    @classmethod
    def redirect(cls, code: int, location: str) -> Fault:
        return cls("redirect", code, (("Location", location),))

    @classmethod
    def corrupt(cls) -> Fault:
        """The right length with one byte changed."""
        return cls("corrupt")

    @classmethod
    def garbage(cls) -> Fault:
        """The right length, every byte of it 0xFF: not a zlib stream from its first byte on."""
        return cls("garbage")

    @classmethod
    def wait_for(cls, other: str) -> Fault:
        """Answer once a request for ``other`` has arrived too (503 after 5 s without one): shows that
        a client asks for both at the same time."""
        return cls("wait", other=other)


@dataclass(frozen=True)
class Seen:
    target: str  # as sent: a path, or an absolute URL when the client took us for a proxy
    headers: dict[str, str]


@dataclass
class _Rule:
    match: str
    fault: Fault
    times: int | None


@dataclass
class FaultServer:
    root: Path | None = None
    bind: str = "127.0.0.1"
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0  # accepted so far

    def __post_init__(self) -> None:
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def inject(self, match: str, fault: Fault, times: int | None = None) -> None:
        """Answer requests whose target contains ``match`` ("" = all) with ``fault``."""
        with self._lock:
            self._rules.append(_Rule(match, fault, times))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def count(self, match: str = "") -> int:
        with self._lock:
            return sum(match in seen.target for seen in self.requests)

    def _seen(self, target: str, headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.requests.append(Seen(target, headers))
            for rule in self._rules:
                if rule.match in target and rule.times != 0:
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.fault
        return None

    def start(self) -> FaultServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._server = _Server((self.bind, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging and stalling answers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up on stalled answers by design


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: FaultServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.server_owner._lock:
            self.server_owner.connections += 1

    def do_GET(self) -> None:
        owner = self.server_owner
        fault = owner._seen(self.path, {k.lower(): v for k, v in self.headers.items()})
        body = self._file()
        if fault is None:
            if body is None:
                self._answer(404, b"Not Found\n")
            else:
                self._answer(200, body, self._cache_headers())
        elif fault.kind == "status":
            self._answer(fault.status, b"injected error\n", fault.headers)
        elif fault.kind == "redirect":
            self._answer(fault.status, b"", fault.headers)
        elif fault.kind == "hang":
            owner._stopping.wait(30)
            self.close_connection = True
        elif fault.kind == "wait":
            deadline = time.monotonic() + 5
            while not owner.count(fault.other) and time.monotonic() < deadline:
                time.sleep(0.01)
            if owner.count(fault.other) and body is not None:
                self._answer(200, body, self._cache_headers())
            else:
                self._answer(503, b"the other request did not come\n")
        elif fault.kind == "corrupt":
            data = bytearray(body or b"x")
            data[len(data) // 2] ^= 0xFF
            self._answer(200, bytes(data), self._cache_headers())
        elif fault.kind == "garbage":
            self._answer(200, b"\xff" * len(body or b"x"), self._cache_headers())
        else:
            self._partial(fault.kind, fault.status, body or b"x" * 4096)

    def _cache_headers(self) -> tuple[tuple[str, str], ...]:
        """What the stratum server (and cvmfs_server's Apache) says: objects are immutable."""
        name = urlsplit(self.path).path.rpartition("/")[2]
        return (("Cache-Control", "max-age=61" if name.startswith(".cvmfs") else "max-age=259200"),)

    def _file(self) -> bytes | None:
        path = urlsplit(self.path).path
        relative = path.removeprefix("/cvmfs/").lstrip("/")
        root = self.server_owner.root
        if root is None or ".." in relative.split("/"):
            return None
        try:
            return (root / relative).read_bytes()
        except OSError:
            return None

    def _answer(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _partial(self, kind: str, rate: int, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.close_connection = True
        if kind == "trickle":
            step = max(1, rate // 20)
            for start in range(0, len(body), step):
                if self.server_owner._stopping.wait(0.05):
                    return
                self.wfile.write(body[start:start + step])
                self.wfile.flush()
            return
        self.wfile.write(body[:len(body) // 2])
        self.wfile.flush()
        if kind == "stall":
            self.server_owner._stopping.wait(30)
