"""User-data from HTTP metadata services: GCE, EC2 (IMDSv2 token first), OpenStack and CloudStack.

µCernVM's paths and rules: each service is asked for its user-data and, when that fails, for one
meta-data item; a service that has meta-data but no user-data counts as found with empty user-data.
Every request is bounded by a short timeout cut to one overall deadline, never retried (a VM
without a context must not wait), and its body is read up to a size limit. Hosts are ``host:port``
so tests point them at fakes on 127.0.0.1.
"""

from __future__ import annotations

import errno
import json
import re
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from urllib.parse import urlsplit

from ucernvm.client import http11
from ucernvm.context.found import CLOUDSTACK, EC2, GCE, OPENSTACK, FoundContext, MetaData
from ucernvm.context.media import META_LIMIT, USER_DATA_LIMIT, clean, decode_base64, json_meta
from ucernvm.records import NamedTuple

GCE_HEADERS = {"Metadata-Flavor": "Google", "X-Google-Metadata-Request": "True"}  # current and legacy
GCE_KEY_USER = "cloudinit"  # the ssh-keys user name whose keys cloud-init gives the default user, whatever its name
GCE_EXPIRY = "%Y-%m-%dT%H:%M:%S+0000"  # a google-ssh key's expireOn, as cloud-init reads it
EC2_TOKEN_PATH = "/latest/api/token"
EC2_TOKEN_TTL = "X-aws-ec2-metadata-token-ttl-seconds"
EC2_TOKEN = "X-aws-ec2-metadata-token"
EC2_VERSION = "2016-04-19"  # µCernVM's
OPENSTACK_VERSION = "2013-10-17"
MAX_KEYS = 16

Log = Callable[[str], None]
Host = tuple[str, int]


def parse_host(text: str, default_port: int = 80) -> Host:
    """``host``, ``host:port`` or ``[v6]:port``."""
    parts = urlsplit(f"//{text}")
    if not parts.hostname:
        raise ValueError(f"{text!r} is not host[:port]")
    return parts.hostname, parts.port or default_port


def reachable(hosts: Iterable[Host], timeout: float) -> set[Host]:
    """The hosts that accept a TCP connection within ``timeout`` seconds, tried in parallel
    (µCernVM's portprobe: an unreachable metadata address costs the timeout once, not per source)."""
    selector = selectors.DefaultSelector()
    up: set[Host] = set()
    sockets = []
    try:
        for host in dict.fromkeys(hosts):
            try:
                info = socket.getaddrinfo(host[0], host[1], type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0]
            except OSError:
                continue
            sock = socket.socket(info[0], socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setblocking(False)
            code = sock.connect_ex(info[4])
            if code == 0:
                up.add(host)
            elif code == errno.EINPROGRESS:
                selector.register(sock, selectors.EVENT_WRITE, host)
        end = time.monotonic() + timeout
        while selector.get_map() and (left := end - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                selector.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:  # type: ignore[union-attr]
                    up.add(key.data)
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    return up


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """Requests to one metadata host, each bounded by ``request_timeout`` and the overall deadline."""

    def __init__(self, host: Host, deadline: float, request_timeout: float, log: Log, warn: Log) -> None:
        self.host = host
        self.deadline = deadline
        self.request_timeout = request_timeout
        self.log = log
        self.warn = warn
        self.pool = http11.ConnectionPool(maxsize=1)

    def close(self) -> None:
        self.pool.clear()

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                limit: int = META_LIMIT) -> Reply | None:
        """The reply, or None when there is none in time (refused, reset, timed out, too large)."""
        start = time.monotonic()
        end = min(self.deadline, start + self.request_timeout)
        if end <= start:
            return None
        name = f"[{self.host[0]}]" if ":" in self.host[0] else self.host[0]  # an IPv6 address: [fd00:ec2::254]
        url = f"http://{name}:{self.host[1]}{path}"
        where = f"{method} {url}"
        try:
            response = self.pool.request(method, url, headers or {}, end - start)
            try:
                chunks = []
                size = 0
                while size <= limit and time.monotonic() < end:
                    chunk = response.read1(min(65536, limit + 1 - size))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                else:
                    if size > limit:
                        self.warn(f"{where}: larger than {limit} bytes: ignored")
                    else:
                        self.log(f"{where}: no complete reply in {self.request_timeout:g} s")
                    return None
            finally:
                response.release_conn()
        except http11.HttpFailure as failure:
            self.log(f"{where}: {failure.detail}")
            return None
        except OSError as error:
            self.log(f"{where}: {type(error).__name__}")
            return None
        return Reply(response.status, dict(response.headers), b"".join(chunks))

    def get(self, path: str, headers: dict[str, str] | None = None, limit: int = META_LIMIT) -> bytes | None:
        """The body of a 200 reply, else None."""
        reply = self.request("GET", path, headers, limit)
        return reply.body if reply is not None and reply.status == 200 else None


def _text(body: bytes | None, limit: int = 255) -> str:
    return clean(body.decode("utf-8", "replace"), limit) if body else ""


def _key_lines(body: bytes | None) -> list[str]:
    return [line for line in (body or b"").decode("utf-8", "replace").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------- GCE


def fetch_gce(client: Client) -> FoundContext | None:
    """``instance/attributes/user-data`` (µCernVM; in base64 when ``user-data-encoding`` says so, as
    cloud-init reads it), else ``cvm-user-data`` in base64 (amiconfig's);
    meta-data check ``instance/id``. Replies must carry ``Metadata-Flavor: Google``, as GCE's do,
    so that a server answering 200 to anything is not taken for GCE."""
    def get(path: str, limit: int = META_LIMIT) -> tuple[bool, bytes | None]:
        reply = client.request("GET", f"/computeMetadata/v1/{path}", GCE_HEADERS, limit)
        google = reply is not None and reply.headers.get("metadata-flavor", "").lower() == "google"
        return google, reply.body if google and reply is not None and reply.status == 200 else None

    google, user_data = get("instance/attributes/user-data", USER_DATA_LIMIT)
    if not google:
        return None
    if user_data is not None:
        user_data = _gce_decoded(user_data, get("instance/attributes/user-data-encoding")[1], client.warn)
    else:
        _, encoded = get("instance/attributes/cvm-user-data", USER_DATA_LIMIT)
        if encoded is not None:
            user_data = decode_base64(encoded.decode("ascii", "replace"), "GCE cvm-user-data", client.warn)
    _, instance_id = get("instance/id")
    if user_data is None and instance_id is None:
        return None
    hostname = _text(get("instance/hostname")[1]).split(".")[0]  # cloud-init's GCE datasource: the short name
    keys = tuple(_gce_key_lines(lambda path: get(path)[1]))
    return FoundContext(GCE, user_data or b"", MetaData(_text(instance_id), hostname, user_keys=keys))


def _gce_key_lines(get: Callable[[str], bytes | None]) -> list[str]:
    """The ``user:key`` lines cloud-init's GCE datasource reads: the instance's ``sshKeys`` (legacy) and
    ``ssh-keys``, then the project's, unless the instance blocks them or has legacy ``sshKeys``."""
    legacy = _key_lines(get("instance/attributes/sshKeys"))
    lines = legacy + _key_lines(get("instance/attributes/ssh-keys"))
    if not legacy and _text(get("instance/attributes/block-project-ssh-keys")).lower() != "true":
        lines += _key_lines(get("project/attributes/ssh-keys")) + _key_lines(get("project/attributes/sshKeys"))
    return lines


def gce_keys_by_user(lines: Iterable[str]) -> list[tuple[str, str]]:
    """The (user, key) pairs of ``user:key`` lines that cloud-init's GCE datasource takes, for the
    default user, from those two users: ``cloudinit`` and the default user's own name; not expired."""
    pairs = []
    for line in lines:
        user, colon, key = line.partition(":")
        key = clean(key, 16384)
        if colon and key and line.isascii() and not _gce_key_expired(key):
            pairs.append((user, key))
    return pairs


def _gce_key_expired(key: str) -> bool:
    """Whether a key in GCE's own format, ``<type> <key> google-ssh {"userName":..., "expireOn":...}``
    (what gcloud and the console add for a while), has expired. Any other key never does, nor one whose
    date cloud-init cannot read."""
    fields = key.split(None, 3)
    if len(fields) != 4 or fields[2] != "google-ssh":
        return False
    try:
        document = json.loads(fields[3])
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return False
    expiry = document.get("expireOn") if isinstance(document, dict) else None
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    try:  # strptime as cloud-init's, which takes 1-digit months and days too
        return isinstance(expiry, str) and datetime.strptime(expiry, GCE_EXPIRY) < now
    except ValueError:
        return False


def _gce_decoded(user_data: bytes, encoding: bytes | None, warn: Log) -> bytes:
    """user-data as cloud-init's GCE datasource reads it: base64-decoded when ``user-data-encoding`` says
    ``base64`` (GCE's way to carry binary user-data, such as gzip); the OS's cloud-init is seeded with it."""
    name = (encoding or b"").decode("ascii", "replace").strip()
    if name == "base64":
        return decode_base64(user_data.decode("ascii", "replace"), "GCE user-data (user-data-encoding base64)", warn)
    if name:
        warn(f"GCE user-data-encoding {clean(name)!r} is unknown: the user-data is taken as it is")
    return user_data


# ------------------------------------------------------------------------------------- EC2 style


def ec2_token(client: Client) -> str:
    """An IMDSv2 session token, or "" where the service has none (IMDSv1, OpenStack, CloudStack)."""
    reply = client.request("PUT", EC2_TOKEN_PATH, {EC2_TOKEN_TTL: "21600"})
    return _text(reply.body, 4096) if reply is not None and reply.status == 200 else ""


def _ec2_style(client: Client, prefix: str, meta_check: str, source: str,
               headers: dict[str, str]) -> FoundContext | None:
    """``<prefix>/user-data``, else the meta-data item ``meta_check``; then the NoCloud meta-data."""
    reply = client.request("GET", f"{prefix}/user-data", headers, USER_DATA_LIMIT)
    user_data = reply.body if reply is not None and reply.status == 200 else None
    if user_data is None and client.get(f"{prefix}/meta-data/{meta_check}", headers) is None:
        if reply is not None and reply.status == 401 and not headers:
            client.warn(f"{source} metadata at {client.host[0]}:{client.host[1]} wants an IMDSv2 token and gave none")
        return None

    def get(item: str) -> bytes | None:
        return client.get(f"{prefix}/meta-data/{item}", headers)

    keys = []
    for line in _key_lines(get("public-keys"))[:MAX_KEYS]:
        index = re.match(r"(\d+)=", line)
        if index:  # EC2 lists "0=name", the key is below it
            keys.append(_text(get(f"public-keys/{index.group(1)}/openssh-key"), 16384))
        else:  # CloudStack answers with the key itself
            keys.append(clean(line, 16384))
    meta = MetaData(_text(get("instance-id")), _text(get("local-hostname")), tuple(filter(None, keys)))
    return FoundContext(source, user_data or b"", meta)


def fetch_ec2(client: Client) -> FoundContext | None:
    token = ec2_token(client)
    return _ec2_style(client, f"/{EC2_VERSION}", "ami-id", EC2, {EC2_TOKEN: token} if token else {})


def fetch_openstack(client: Client) -> FoundContext | None:
    """The OpenStack API (user_data, meta_data.json), then its EC2-compatible ``/latest`` tree."""
    base = f"/openstack/{OPENSTACK_VERSION}"
    user_data = client.get(f"{base}/user_data", limit=USER_DATA_LIMIT)
    meta_data = client.get(f"{base}/meta_data.json")
    if user_data is not None or meta_data is not None:
        meta = json_meta(meta_data, "OpenStack meta_data.json", client.warn) if meta_data is not None else None
        return FoundContext(OPENSTACK, user_data or b"", meta or MetaData())
    return _ec2_style(client, "/latest", "ami-id", OPENSTACK, {})


def fetch_cloudstack(client: Client) -> FoundContext | None:
    """The virtual router (10.1.1.1 or the DHCP server): ``/latest/user-data``, meta ``instance-id``."""
    return _ec2_style(client, "/latest", "instance-id", CLOUDSTACK, {})


LINK_LOCAL_FETCHERS: tuple[tuple[str, Callable[[Client], FoundContext | None]], ...] = (
    (GCE, fetch_gce), (EC2, fetch_ec2), (OPENSTACK, fetch_openstack))
