"""A CernVM Online service for tests and demos: PIN pairing and the cluster key-value service.

It answers as the real service does (``cernvm-online``: ``cvmo/vm/views.py``, ``cvmo/rest_api``):

- ``GET /api/context`` (also ``/api/fetch``, ``/vm/api/context``, ``/vm/api/fetch``): HTTP 400
  without ``uuid``, ``ver``, ``pin`` or ``context_id``, and ``checksum``; then ``text/plain``,
  never cached: ``not-found`` for a PIN that is unknown, older than 5 minutes or used already,
  ``invalid-checksum`` for a wrong secret (the PIN stays usable), ``not-authorized`` for a machine
  that another owner paired before, else the rendered context (``ENCRYPTED:...`` when it has a
  secret). A PIN pairs one machine. A ``context_id`` is never not-authorized: the machine is
  registered to the context's owner.
- PINs are made like ``gen_pin``: for an encrypted context the first 4 digits add up to the salt of
  the context's UUID, and the last digit is odd; otherwise random digits and an even last digit.
  ``GET /vm/pair/<context name or uuid>`` hands out a new one (``text/plain``; the real page needs
  a login), ``GET /vm/ajax/machine/status/<pin>`` tells ``{"status": ...}``.
- ``/api/v1/clusters``: ``POST`` makes a 12-character cluster PIN (201); ``GET``/``DELETE``
  ``clusters/<pin>``; ``GET``/``POST clusters/<pin>/keys`` (201; 409 for an existing key, 404 for
  an unknown cluster, 400 for a bad body); ``GET``/``PUT``/``PATCH``/``DELETE
  clusters/<pin>/keys/<key>``, answered as ``text/plain`` ``"<key>: <value>"`` unless the client
  accepts only JSON. Clusters expire after 24 hours, as documented.
- Request bodies (up to 64 KiB) come with a ``Content-Length`` or in chunks
  (``Transfer-Encoding: chunked``); a malformed one is answered 400 and ends the connection.

Definitions file (JSON; paths relative to it)::

    {"contexts": [{"name": "demo", "user_data": "#cloud-config\\n...",    (or "user_data_file")
                   "secret": "", "root_pubkey": "ssh-ed25519 AAAA... demo", "owner": "demo",
                   "uuid": "<32 hex; default: derived from the name>", "pins": ["123456"]}],
     "clusters": [{"pin": "abcdefghij12", "keys": {"master_ip": "10.0.2.15"}}],
     "replies": {"000000": "invalid-request"},     (canned answers for a PIN, to test clients)
     "pin_lifetime": 300, "cluster_lifetime": 86400}
"""

from __future__ import annotations

import base64
import datetime
import json
import random
import re
import socket
import threading
import time
import unicodedata
import uuid as uuidlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from ucernvm.context.online import checksum, encrypt, needs_secret, salt
from ucernvm.errors import ConfigError
from ucernvm.server import accesslog
from ucernvm.server.connections import IDLE_TIMEOUT, ConnectionSlots, SlotsMixIn

PIN_LIFETIME = 300.0  # vm/views.py REQUEST_TIMEOUT
CLUSTER_LIFETIME = 24 * 3600.0
CONTEXT_PATHS = ("/api/context", "/api/fetch", "/vm/api/context", "/vm/api/fetch")
CLUSTER_PIN_CHARS = "abcdefghijklmnopqrstuvwxyz1234567890"
CLUSTER_PIN_LENGTH = 12
MAX_BODY = 64 * 1024
MAX_LINE = 1024  # a chunk size or trailer line
MAX_TRAILERS = 32

_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,8})[ \t]*(?:;.*)?")
_CLUSTERS = re.compile(r"^/api/v1/clusters(?:/([a-z0-9]{12})(/keys(?:/([a-zA-Z0-9_-]+))?)?)?$")
_NAMESPACE = uuidlib.UUID("6f1d2a34-8c4e-4b7a-9a51-0c3e5d7f9b20")  # names -> stable context UUIDs
_random = random.SystemRandom()

Reply = tuple[int, str, bytes]  # status, content type, body


def _sanitize(text: str, allowed: str) -> str:
    """``cvmo.core.utils.context.sanitize``: ASCII only, other characters as '_', trimmed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(f"[^{allowed}]+", "_", text)
    return re.sub(r"(^[_\s]+|[_\s]+$)", "", text)


@dataclass
class Context:
    name: str
    user_data: bytes
    secret: str = ""
    root_pubkey: str = ""
    owner: str = "demo"
    uuid: str = ""

    def __post_init__(self) -> None:
        self.uuid = self.uuid or uuidlib.uuid5(_NAMESPACE, self.name).hex

    @property
    def key(self) -> str:
        """What the service stores for an encrypted context and compares checksums with."""
        return checksum(self.uuid, self.secret) if self.secret else ""

    def render(self) -> bytes:
        """``ContextPlugins.renderContext``'s lines, encrypted when the context has a secret."""
        lines = [f"VM_CONTEXT_UUID={self.uuid}",
                 f'VM_CONTEXT_NAME="{_sanitize(self.name, r"A-Za-z0-9 _-")}"',
                 f"EC2_USER_DATA={base64.b64encode(self.user_data).decode()}"]
        if self.root_pubkey:
            key = _sanitize(self.root_pubkey, r"=+/@.A-Za-z0-9 _-")
            lines.append(f"ROOT_PUBKEY={base64.b64encode(key.encode()).decode()}")
        plain = "".join(line + "\n" for line in lines).encode()
        if not self.secret:
            return plain
        return b"ENCRYPTED:" + base64.b64encode(encrypt(plain, self.secret))


@dataclass
class _Claim:
    context: Context
    allocated: float
    status: str = "U"  # Unclaimed, Claimed, Error (the service's ClaimRequests states)


@dataclass
class _Cluster:
    pin: str
    created: float
    keys: dict[str, str] = field(default_factory=dict)


def gen_pin(context: Context) -> str:
    """A PIN per ``gen_pin(6, encrypted, get_uuid_salt(uuid))``."""
    if not context.secret:
        return "".join(_random.choice("0123456789") for _ in range(5)) + _random.choice("02468")
    total = int(salt(context.uuid))
    while True:
        parts = [_random.randint(0, total // 4) for _ in range(3)]
        parts.append(total - sum(parts))
        if parts[3] <= 9:
            break
    _random.shuffle(parts)
    return "".join(map(str, parts)) + _random.choice("0123456789") + _random.choice("13579")


def _json(status: int, value: Any) -> Reply:
    return status, "application/json", json.dumps(value).encode()


def _text(status: int, text: str | bytes) -> Reply:
    return status, "text/plain", text if isinstance(text, bytes) else text.encode()


_NOT_FOUND = {"detail": "Not found."}


class OnlineService:
    """The service's state and answers, without HTTP; thread-safe."""

    def __init__(self, contexts: Iterable[Context] = (), *, pin_lifetime: float = PIN_LIFETIME,
                 cluster_lifetime: float = CLUSTER_LIFETIME, clock: Callable[[], float] = time.time) -> None:
        self.contexts = {context.uuid: context for context in contexts}
        self.pin_lifetime = pin_lifetime
        self.cluster_lifetime = cluster_lifetime
        self.clock = clock
        self.replies: dict[str, bytes] = {}  # canned answers by PIN, for client tests
        self.machines: dict[str, dict[str, str]] = {}  # VM uuid -> owner, ip, version, context
        self._claims: dict[str, _Claim] = {}
        self._clusters: dict[str, _Cluster] = {}
        self._lock = threading.Lock()

    # --- definitions --------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, clock: Callable[[], float] = time.time) -> OnlineService:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the definitions must be a JSON object")

        def fail(message: str) -> ConfigError:
            return ConfigError(f"{path}: {message}", "see `ucernvm serve --help` for the file format")

        try:
            service = cls(pin_lifetime=float(data.get("pin_lifetime", PIN_LIFETIME)),
                          cluster_lifetime=float(data.get("cluster_lifetime", CLUSTER_LIFETIME)), clock=clock)
            for entry in data.get("contexts", []):
                if "user_data_file" in entry:
                    user_data = (path.parent / entry["user_data_file"]).read_bytes()
                else:
                    user_data = str(entry.get("user_data", "")).encode()
                context = Context(str(entry["name"]), user_data, str(entry.get("secret", "")),
                                  str(entry.get("root_pubkey", "")), str(entry.get("owner", "demo")),
                                  str(entry.get("uuid", "")))
                if not re.fullmatch(r"[0-9a-f]{32}", context.uuid):
                    raise fail(f"context {context.name!r}: uuid must be 32 lower-case hex digits")
                service.contexts[context.uuid] = context
                for pin in entry.get("pins", []):
                    service.add_pin(str(pin), context.uuid)
            for entry in data.get("clusters", []):
                service.add_cluster(str(entry["pin"]), {str(k): str(v) for k, v in entry.get("keys", {}).items()})
            for pin, reply in data.get("replies", {}).items():
                service.replies[pin] = (base64.b64decode(reply["base64"]) if isinstance(reply, dict)
                                        else str(reply).encode())
        except KeyError as error:
            raise fail(f"an entry lacks {error}") from None
        except (TypeError, AttributeError, ValueError) as error:
            raise fail(f"malformed entry ({error})") from None
        except OSError as error:
            raise fail(f"cannot read {error.filename}: {error.strerror}") from None
        return service

    def context(self, reference: str) -> Context:
        """A context by UUID or name; ConfigError if there is none."""
        for context in self.contexts.values():
            if reference in (context.uuid, context.name):
                return context
        raise ConfigError(f"no context {reference!r}", f"known: {', '.join(c.name for c in self.contexts.values())}")

    # --- PINs ---------------------------------------------------------------------------------

    def add_pin(self, pin: str, reference: str) -> None:
        """Allocate a chosen PIN (now), checked against the structure the service's PINs have."""
        context = self.context(reference)
        if not re.fullmatch(r"[0-9]{6}", pin):
            raise ConfigError(f"PIN {pin!r} is not 6 digits")
        if needs_secret(pin) != bool(context.secret):
            raise ConfigError(f"PIN {pin} ends in an {'odd' if needs_secret(pin) else 'even'} digit, but "
                              f"context {context.name!r} is {'not ' if not context.secret else ''}encrypted",
                              "odd last digits mark encrypted contexts (those with a secret)")
        if context.secret and salt(pin) != salt(context.uuid):
            raise ConfigError(f"the first 4 digits of PIN {pin} must add up to {int(salt(context.uuid))}, "
                              f"the salt of context {context.name!r}")
        with self._lock:
            if self._live(pin):
                raise ConfigError(f"PIN {pin} is already in use")
            self._claims[pin] = _Claim(context, self.clock())

    def new_pin(self, reference: str) -> str:
        context = self.context(reference)
        with self._lock:
            while True:  # the space is small: avoid a PIN that is still pending
                pin = gen_pin(context)
                if not self._live(pin):
                    self._claims[pin] = _Claim(context, self.clock())
                    return pin

    def pending_pins(self, reference: str) -> list[str]:
        """The PINs of a context that can still pair a machine."""
        context = self.context(reference)
        with self._lock:
            return [pin for pin, claim in self._claims.items() if claim.context is context and self._live(pin)]

    def _live(self, pin: str) -> bool:
        claim = self._claims.get(pin)
        return claim is not None and claim.status == "U" and not self._expired(claim)

    def _expired(self, claim: _Claim) -> bool:
        return claim.allocated < self.clock() - self.pin_lifetime

    def pin_status(self, pin: str) -> str | None:
        with self._lock:
            claim = self._claims.get(pin)
            if claim is None:
                return None
            if self._expired(claim):
                return "expired"
            return {"U": "unclaimed", "C": "claimed", "E": "error"}[claim.status]

    def fetch(self, query: dict[str, str], ip: str) -> Reply:
        """``context_fetch``: the answer to ``/api/context`` with these query parameters."""
        if not all(name in query for name in ("uuid", "ver", "checksum")) or not (
                "pin" in query or "context_id" in query):
            return _text(400, "Bad Request (400)\n")
        machine, given = query["uuid"], query["checksum"]
        with self._lock:
            if "pin" in query:
                pin = query["pin"]
                if pin in self.replies:
                    return _text(200, self.replies[pin])
                claim = self._claims.get(pin)
                if claim is None or claim.status != "U" or self._expired(claim):
                    return _text(200, "not-found")
                context = claim.context
            else:
                found = self.contexts.get(query["context_id"])
                if found is None:
                    return _text(200, "not-found")
                context, claim = found, None
            if context.key and context.key != given:
                return _text(200, "invalid-checksum")
            known = self.machines.get(machine)
            if claim is not None and known is not None and known["owner"] != context.owner:
                claim.status = "E"  # a PIN of another account: a hijack (a context ID is the owner's own)
                return _text(200, "not-authorized")
            if claim is not None:
                claim.status = "C"
            self.machines[machine] = {"owner": context.owner, "ip": ip, "version": query["ver"],
                                      "context": context.uuid}
            return _text(200, context.render())

    # --- clusters -----------------------------------------------------------------------------

    def add_cluster(self, pin: str | None = None, keys: dict[str, str] | None = None) -> str:
        with self._lock:
            if pin is None:
                while pin is None or pin in self._clusters:
                    pin = "".join(_random.choice(CLUSTER_PIN_CHARS) for _ in range(CLUSTER_PIN_LENGTH))
            elif not re.fullmatch(f"[{CLUSTER_PIN_CHARS}]{{{CLUSTER_PIN_LENGTH}}}", pin):
                raise ConfigError(f"cluster PIN {pin!r} is not 12 characters of a-z and 0-9")
            self._clusters[pin] = _Cluster(pin, self.clock(), dict(keys or {}))
            return pin

    def _cluster(self, pin: str) -> _Cluster | None:
        cluster = self._clusters.get(pin)
        if cluster is not None and cluster.created < self.clock() - self.cluster_lifetime:
            del self._clusters[pin]
            return None
        return cluster

    def _describe(self, cluster: _Cluster) -> dict[str, str]:
        when = datetime.datetime.fromtimestamp(cluster.created, datetime.timezone.utc)
        return {"pin": cluster.pin, "creation_time": when.isoformat().replace("+00:00", "Z")}

    def clusters(self, method: str, path: str, body: bytes, accept: str) -> Reply:
        """The ``/api/v1/`` REST API (Django REST framework views of ``cvmo.rest_api``)."""
        match = _CLUSTERS.match(path)
        if match is None:
            return _text(404, "Not Found\n")
        pin, keys, key = match.groups()
        allowed = ("POST",) if pin is None else ("GET", "DELETE") if keys is None else \
            ("GET", "POST") if key is None else ("GET", "PUT", "PATCH", "DELETE")
        if method not in allowed:
            return _json(405, {"detail": f'Method "{method}" not allowed.'})
        if pin is None:
            created = self.add_cluster()
            with self._lock:
                return _json(201, self._describe(self._clusters[created]))
        with self._lock:
            cluster = self._cluster(pin)
            if keys is None:
                if cluster is None:
                    return _json(404, _NOT_FOUND)
                if method == "DELETE":
                    del self._clusters[pin]
                    return 204, "text/plain", b""
                return _json(200, self._describe(cluster))
            if key is None:
                if method == "GET":
                    items = cluster.keys.items() if cluster is not None else ()
                    return _json(200, [{"key": k, "value": v} for k, v in items])
                data, errors = _key_value(body, partial=False)
                if errors:
                    return _json(400, errors)
                if cluster is not None and data["key"] in cluster.keys:
                    return _json(409, {"detail": "Resource already exists, cannot be created again"})
                if cluster is None:
                    return _json(404, _NOT_FOUND)
                cluster.keys[data["key"]] = data["value"]
                return _json(201, data)
            return self._key(method, cluster, key, body, _wants_json(accept))

    def _key(self, method: str, cluster: _Cluster | None, key: str, body: bytes, as_json: bool) -> Reply:
        if cluster is None or key not in cluster.keys:
            return _json(404, _NOT_FOUND) if as_json else _text(404, "")
        if method == "DELETE":
            del cluster.keys[key]
            return 204, "text/plain", b""
        if method in ("PUT", "PATCH"):
            data, errors = _key_value(body, partial=method == "PATCH")
            if errors:
                return _json(400, errors)
            value = data.get("value", cluster.keys[key])
            del cluster.keys[key]
            key = data.get("key", key)
            cluster.keys[key] = value
        value = cluster.keys[key]
        return _json(200, {"key": key, "value": value}) if as_json else _text(200, f"{key}: {value}")


def _key_value(body: bytes, partial: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """A ``ClusterKeyValueSerializer`` body: ({key, value}, {}) or ({}, DRF-style errors)."""
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return {}, {"detail": f"JSON parse error - {error}"}
    if not isinstance(data, dict):
        return {}, {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {type(data).__name__}."]}
    result: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for name, limit in (("key", 100), ("value", 1000)):
        if name not in data:
            if not partial:
                errors[name] = ["This field is required."]
            continue
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            errors[name] = ["Not a valid string."]
        elif not str(value).strip():
            errors[name] = ["This field may not be blank."]
        elif len(str(value)) > limit:
            errors[name] = [f"Ensure this field has no more than {limit} characters."]
        else:
            result[name] = str(value).strip()
    return result, errors


def _wants_json(accept: str) -> bool:
    """The key view renders plain text first; JSON only when the client asks for it, not for text."""
    types = {part.split(";")[0].strip() for part in accept.split(",")}
    return "application/json" in types and "text/plain" not in types


# --- HTTP ---------------------------------------------------------------------------------------


def _read_chunked(stream: BinaryIO) -> bytes | Reply:
    """A chunked body: hexadecimal size lines (extensions after ';' ignored), each chunk ended by CRLF,
    a zero size, then trailer lines up to an empty one."""
    body = bytearray()
    while True:
        size = _CHUNK_SIZE.fullmatch(stream.readline(MAX_LINE).rstrip(b"\r\n"))
        if size is None:
            return _text(400, "Bad Request\n")
        length = int(size.group(1), 16)
        if length == 0:
            break
        if len(body) + length > MAX_BODY:
            return _text(413, "Request Entity Too Large\n")
        chunk = stream.read(length)
        if len(chunk) < length or stream.read(2) != b"\r\n":
            return _text(400, "Bad Request\n")
        body += chunk
    for _ in range(MAX_TRAILERS):
        if stream.readline(MAX_LINE).rstrip(b"\r\n") == b"":
            return bytes(body)
    return _text(400, "Bad Request\n")


class OnlineServer:
    """Serves an :class:`OnlineService` over HTTP from a background thread.

    Use as ``with OnlineServer(service) as server: ... server.url ...``.
    """

    def __init__(self, service: OnlineService, bind: str = "127.0.0.1", port: int = 0,
                 access_log: bool = False, *, idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int | None = None) -> None:
        self.service = service
        self.bind = bind
        self.access_log = access_log
        self.slots = ConnectionSlots(idle_timeout, max_connections)  # as the stratum's
        self._requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        return f"http://{host}:{self.port}"

    def start(self) -> OnlineServer:
        if self._httpd is None:
            try:
                self._httpd = _HTTPServer((self.bind, self._requested_port), self)
            except OSError as error:
                raise ConfigError(f"cannot listen on {self.bind} port {self._requested_port}: "
                                  f"{error.strerror or error}", "choose another port (0 picks a free one)") from None
            self.slots.closing.clear()  # started again after a stop
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                            name=f"online {self.url}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            self.slots.close_all()  # first, so that a connection waiting for a slot is refused
            httpd.shutdown()
            httpd.server_close()
            if self._thread is not None:
                self._thread.join()

    def __enter__(self) -> OnlineServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def announce(server: OnlineServer) -> str:
    """What ``ucernvm serve --online`` prints: the URL, and a pending PIN for every context."""
    service = server.service
    lines = [f"CernVM Online API on {server.url}"]
    for context in service.contexts.values():
        pins = service.pending_pins(context.uuid) or [service.new_pin(context.uuid)]
        secret = " (encrypted: give its secret)" if context.secret else ""
        lines.append(f"  context {context.name!r}{secret}: PIN {', '.join(pins)}, valid {service.pin_lifetime:g} s; "
                     f"new PINs from {server.url}/vm/pair/{context.name}")
    return "\n".join(lines)


class _HTTPServer(SlotsMixIn, ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # as the stratum's: new connections wait there while a slot is freed

    def __init__(self, address: tuple[str, int], online: OnlineServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.online = online
        self.slots = online.slots
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ucernvm-online"
    server: _HTTPServer
    timeout = 30.0  # for each blocking call; a request head's deadline is the slots'

    def handle(self) -> None:
        """http.server's loop, with each later request head due within the idle timeout too."""
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.server.slots.awaiting_request(self.connection)
            self.handle_one_request()

    def parse_request(self) -> bool:
        complete = super().parse_request()
        self.server.slots.answering(self.connection)
        if self.server.slots.was_cut(self.connection):  # the head ended at the cut, not the client's end
            self.close_connection = True
            return False
        return complete

    def _handle(self) -> None:
        service = self.server.online.service
        split = urlsplit(self.path)
        path = unquote(split.path)
        body = self._body()
        if not isinstance(body, bytes):
            self.close_connection = True  # the body was not read to its end: the connection cannot be reused
            self._send(body)
            return
        if path in CONTEXT_PATHS and self.command == "GET":
            query = {name: values[-1] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
            forwarded = self.headers.get("X-Forwarded-For")
            ip = forwarded.split(",")[0].strip() if forwarded else self.client_address[0]
            self._send(service.fetch(query, ip))
        elif path.startswith("/api/v1/"):
            self._send(service.clusters(self.command, path, body, self.headers.get("Accept", "")))
        elif path.startswith("/vm/pair/") and self.command == "GET":
            try:
                self._send(_text(200, service.new_pin(path[len("/vm/pair/"):]) + "\n"))
            except ConfigError as error:
                self._send(_text(404, f"{error.message}\n"))
        elif path.startswith("/vm/ajax/machine/status/") and self.command == "GET":
            status = service.pin_status(path.rsplit("/", 1)[1])
            self._send(_json(200, {"status": status}) if status else _json(404, {"status": "unknown"}))
        else:
            self._send(_text(404, "Not Found\n"))

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _body(self) -> bytes | Reply:
        """The request's body, by its chunks (which take precedence) or its Content-Length; an error reply
        when it is malformed or larger than the service takes."""
        coding = self.headers.get("Transfer-Encoding")
        if coding is not None:
            if coding.strip().lower() != "chunked":  # gzip and the like: not the service's to undo
                return _text(501, "Not Implemented\n")
            return _read_chunked(self.rfile)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return _text(413, "Request Entity Too Large\n") if length > 0 else _text(400, "Bad Request\n")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, reply: Reply) -> None:
        status, content_type, body = reply
        self.reply_size = len(body)  # for the access log, which send_response writes
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # uncache_response: the answers change with every claim.
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate, max-age=0")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One line per answer in the stratum's format; http.server's own answers (a malformed
        request, an unknown method) come here too, without a size."""
        if self.server.online.access_log:
            headers = getattr(self, "headers", None) or {}  # none when the request line was malformed
            accesslog.write(accesslog.line(self.client_address[0], self.requestline, int(code),
                                           self.__dict__.pop("reply_size", 0),
                                           headers.get("Referer"), headers.get("User-Agent")))

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's error notes (bad request lines, timeouts): the access log has their answers."""
