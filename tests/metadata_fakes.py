"""Fake cloud metadata services on 127.0.0.1, with the real paths, headers and failure modes.

- EC2 IMDS: ``PUT /latest/api/token`` (needs ``X-aws-ec2-metadata-token-ttl-seconds``, refuses
  ``X-Forwarded-For``), ``/<version>/user-data`` and ``/<version>/meta-data/...``; in IMDSv2-required
  mode every GET without a valid ``X-aws-ec2-metadata-token`` gets 401, as on an instance with
  ``HttpTokens=required``.
- GCE: ``/computeMetadata/v1/instance/...``; 403 without ``Metadata-Flavor: Google`` (or the legacy
  ``X-Google-Metadata-Request: True``); every reply carries ``Metadata-Flavor: Google``.
- OpenStack: ``/openstack/<version>/{user_data,meta_data.json}`` and the EC2-compatible tree
  (``/latest``, ``/2009-04-04``; not the newer EC2 versions, as nova); PUT is not allowed.
- CloudStack's virtual router: ``/latest/user-data`` and ``/latest/meta-data/...``, where
  ``public-keys`` is the key itself.

Modes: no user-data (404) with or without meta-data, a delay before every reply (slow or hanging
server), and a black hole (a port whose connections are never accepted).
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("ec2", "gce", "openstack", "cloudstack")


@dataclass
class Cloud:
    kind: str
    user_data: bytes | None = b"[ucernvm-begin]\ncvmfs_tag=fake\n[ucernvm-end]\n"  # None: 404
    meta: bool = True  # meta-data answers (with user_data None: "meta-data but no user-data")
    imdsv2_required: bool = False  # ec2
    tokens: bool = True  # ec2: the token API exists
    openstack_api: bool = True  # openstack: False leaves only the EC2-compatible tree
    gce_base64: bool = False  # gce: user-data only as base64 in cvm-user-data (amiconfig's attribute)
    gce_encoding: str = ""  # gce: user-data-encoding; "base64": user-data is given in base64 (cloud-init's)
    gce_ssh_keys: str | None = None  # gce: the ssh-keys attribute as given; None: "cloudinit:<key>" lines
    gce_more: dict[str, str] = field(default_factory=dict)  # gce: more items, e.g. "project/attributes/ssh-keys"
    meta_json: bytes | None = None  # openstack: meta_data.json as given (garbage tests)
    delay: float = 0.0  # seconds before each reply
    instance_id: str = "i-0123456789abcdef0"
    hostname: str = "fake-vm.example"
    public_keys: tuple[str, ...] = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyOne fake@one",)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    tokens_issued: set[str] = field(default_factory=set)

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        cloud = self.server.cloud
        headers = {key.lower(): value for key, value in self.headers.items()}
        cloud.requests.append((method, self.path, headers))
        if cloud.delay:
            time.sleep(cloud.delay)
        if method == "PUT":
            status, body, extra = self._put(cloud, headers)
        else:
            status, body, extra = getattr(self, f"_{cloud.kind}")(cloud, headers, self.path)
        with contextlib.suppress(OSError):  # the client gave up (timeouts are what the slow modes test)
            self._reply(status, body, extra)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    # ---------------------------------------------------------------------------------------- EC2

    def _put(self, cloud: Cloud, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        if cloud.kind != "ec2" or not cloud.tokens:
            return 405, b"", {}
        if self.path != "/latest/api/token":
            return 404, b"", {}
        ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
        if "x-forwarded-for" in headers or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return 400, b"", {}
        token = secrets.token_urlsafe(32)
        cloud.tokens_issued.add(token)
        return 200, token.encode(), {"X-aws-ec2-metadata-token-ttl-seconds": ttl}

    def _ec2_tree(self, cloud: Cloud, path: str, versions: tuple[str, ...], keys_listed: bool) -> tuple[int, bytes]:
        version, _, rest = path.lstrip("/").partition("/")
        if version not in versions:
            return 404, b""
        if rest == "user-data":
            return (404, b"") if cloud.user_data is None else (200, cloud.user_data)
        if not cloud.meta or not rest.startswith("meta-data/"):
            return 404, b""
        items = {"ami-id": "ami-0fake", "instance-id": cloud.instance_id, "local-hostname": cloud.hostname}
        if keys_listed:
            items["public-keys/"] = "\n".join(f"{index}=key{index}" for index in range(len(cloud.public_keys)))
            items.update({f"public-keys/{index}/openssh-key": key for index, key in enumerate(cloud.public_keys)})
        else:
            items["public-keys"] = "\n".join(cloud.public_keys)
        item = rest.removeprefix("meta-data/")
        value = items.get(item, items.get(item + "/"))
        return (200, value.encode()) if value is not None else (404, b"")

    def _ec2(self, cloud: Cloud, headers: dict[str, str], path: str) -> tuple[int, bytes, dict[str, str]]:
        token = headers.get("x-aws-ec2-metadata-token")
        if token is not None and token not in cloud.tokens_issued:
            return 401, b"", {}
        if cloud.imdsv2_required and token is None:
            return 401, b"", {}
        return (*self._ec2_tree(cloud, path, ("latest", "2016-04-19", "2009-04-04"), True), {})

    # ---------------------------------------------------------------------------------------- GCE

    def _gce(self, cloud: Cloud, headers: dict[str, str], path: str) -> tuple[int, bytes, dict[str, str]]:
        flavor = {"Metadata-Flavor": "Google"}
        if headers.get("metadata-flavor") != "Google" and headers.get("x-google-metadata-request") != "True":
            return 403, b"Missing Metadata-Flavor:Google header.", flavor
        items = {"instance/id": cloud.instance_id.encode(), "instance/hostname": cloud.hostname.encode()}
        ssh_keys = cloud.gce_ssh_keys
        if ssh_keys is None:
            ssh_keys = "\n".join(f"cloudinit:{key}" for key in cloud.public_keys)
        if ssh_keys:
            items["instance/attributes/ssh-keys"] = ssh_keys.encode()
        items.update({item: value.encode() for item, value in cloud.gce_more.items()})
        if cloud.user_data is not None:
            if cloud.gce_base64:
                items["instance/attributes/cvm-user-data"] = base64.b64encode(cloud.user_data)
            elif cloud.gce_encoding == "base64":
                items["instance/attributes/user-data"] = base64.b64encode(cloud.user_data)
            else:
                items["instance/attributes/user-data"] = cloud.user_data
            if cloud.gce_encoding:
                items["instance/attributes/user-data-encoding"] = cloud.gce_encoding.encode()
        if not cloud.meta:
            items = {key: value for key, value in items.items() if key.startswith("instance/attributes/")
                     and "user-data" in key}
        value = items.get(path.removeprefix("/computeMetadata/v1/"))
        return (200, value, flavor) if value is not None else (404, b"", flavor)

    # ---------------------------------------------------------------------------------------- OpenStack

    def _openstack(self, cloud: Cloud, headers: dict[str, str], path: str) -> tuple[int, bytes, dict[str, str]]:
        if path.startswith("/openstack/"):
            version, _, item = path.removeprefix("/openstack/").partition("/")
            if not cloud.openstack_api or version not in ("2013-10-17", "latest"):
                return 404, b"", {}
            if item == "user_data":
                return (404, b"", {}) if cloud.user_data is None else (200, cloud.user_data, {})
            if item == "meta_data.json" and cloud.meta and cloud.meta_json is not None:
                return 200, cloud.meta_json, {"Content-Type": "application/json"}
            if item == "meta_data.json" and cloud.meta:
                document = {"uuid": cloud.instance_id, "hostname": cloud.hostname,
                            "public_keys": {f"key{index}": key for index, key in enumerate(cloud.public_keys)}}
                return 200, json.dumps(document).encode(), {"Content-Type": "application/json"}
            return 404, b"", {}
        return (*self._ec2_tree(cloud, path, ("latest", "2009-04-04"), True), {})

    # ---------------------------------------------------------------------------------------- CloudStack

    def _cloudstack(self, cloud: Cloud, headers: dict[str, str], path: str) -> tuple[int, bytes, dict[str, str]]:
        return (*self._ec2_tree(cloud, path, ("latest",), False), {})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a hanging handler must not hold up the end of a test
    cloud: Cloud


class _Server6(_Server):
    address_family = socket.AF_INET6


@contextmanager
def metadata_server(cloud: Cloud, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``cloud`` on ``host`` (127.0.0.1, or ::1 as an IPv6 metadata address); yields ``"<host>:<port>"``
    (``"[::1]:<port>"``)."""
    assert cloud.kind in KINDS
    server = (_Server6 if ":" in host else _Server)((host, 0), _Handler)
    server.cloud = cloud
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"[{host}]:{server.server_address[1]}" if ":" in host else f"{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def black_hole() -> Iterator[str]:
    """A port on 127.0.0.1 where a TCP connect never completes (a listener whose queue is full), as a
    metadata address that drops packets: yields ``"127.0.0.1:<port>"``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=1)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        filler.close()
        listener.close()


def closed_port() -> str:
    """A port on 127.0.0.1 that nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
