"""Cluster pairing through the CernVM Online cluster service (µCernVM's ``08clustercontext``).

Machines booted with the same ``cvm_cluster_pin`` meet at ``<service>/api/v1/clusters/<pin>/keys``:

- the master (``cvm_cluster_master=yes``) POSTs ``{"key": "master_ip", "value": "<its IP>"}``
  until the service answers 201;
- a worker polls ``.../keys/master_ready`` (set by the master's OS once it is up) until 200, then
  GETs ``.../keys/master_ip`` (``text/plain``: ``master_ip: <IP>``) and puts that IP wherever its
  user-data says ``###MASTER_IP_PLACEHOLDER###``.

Both retry up to 50 times, 25 s plus 0-9 s apart (about 25 minutes), as µCernVM; the counts and
delays are parameters. Pairing never stops a boot: a failure is returned as a warning, with the
user-data unchanged.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from ucernvm.context.defaults import SERVICE_URL
from ucernvm.context.online import http_request, service_base
from ucernvm.errors import ContextError

PLACEHOLDER = b"###MASTER_IP_PLACEHOLDER###"
MASTER_IP = "master_ip"
MASTER_READY = "master_ready"
TRIES = 50
DELAY = 25.0
JITTER = 9.0
MAX_REPLY = 64 * 1024

_PIN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the service's are 12 of [a-z0-9]; any URL-safe word passes
_ADDRESS = re.compile(r"^[0-9A-Za-z.:%_-]{1,253}$")  # an IP (v4, v6 with zone) or a host name


@dataclass(frozen=True)
class Retry:
    tries: int = TRIES
    delay: float = DELAY  # seconds between tries
    jitter: float = JITTER  # plus up to this many seconds, so a cluster's machines spread out
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class Pairing:
    user_data: bytes  # with the master's IP filled in (workers), else as given
    master_ip: str | None = None  # the IP published (master) or received (worker)
    warning: str | None = None  # why pairing failed; None when it worked


def pair_cluster(user_data: bytes, pin: str, master: bool, service_url: str = SERVICE_URL, *,
                 ip: str | None = None, retry: Retry = Retry(), timeout: float = 10.0,
                 cafile: str | None = None, log: Callable[[str], None] | None = None) -> Pairing:
    """Publish this master's IP, or fill the master's IP into a worker's user-data."""
    say = log or (lambda message: None)
    if not _PIN.match(pin):
        return Pairing(user_data, warning=f"cluster PIN {pin!r} is not a word of letters and digits: "
                                          "cluster pairing skipped")
    base = f"{service_base(service_url)}/api/v1/clusters/{urllib.parse.quote(pin)}/keys"
    try:
        if master:
            address = ip or own_address(base)
            _publish(base, address, retry, timeout, cafile, say)
            return Pairing(user_data, address)
        _wait_for(f"{base}/{MASTER_READY}", retry, timeout, cafile, say)
        address = _wait_for(f"{base}/{MASTER_IP}", retry, timeout, cafile, say)
    except ContextError as error:
        role = "master" if master else "worker"
        return Pairing(user_data, warning=f"cluster pairing ({role}, PIN {pin}) failed: {error.message}")
    if not _ADDRESS.match(address):
        return Pairing(user_data, warning=f"cluster pairing (worker, PIN {pin}): the master's address "
                                          f"{address[:80]!r} is not an IP address or host name")
    say(f"cluster master is {address}")
    return Pairing(user_data.replace(PLACEHOLDER, address.encode()), address)


def own_address(url: str) -> str:
    """The local address that reaches ``url``'s host: the one the cluster's machines can use too.

    (µCernVM took the first interface's; connecting a UDP socket sends nothing.)
    """
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        family, _, _, _, address = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except (OSError, IndexError) as error:
        raise ContextError(f"cannot find this machine's address towards {parts.hostname}: {error}") from None


def _pause(retry: Retry, attempt: int) -> None:
    if attempt < retry.tries:  # no sleep after the last try
        retry.sleep(retry.delay + random.uniform(0, retry.jitter))


def _publish(base: str, address: str, retry: Retry, timeout: float, cafile: str | None,
             say: Callable[[str], None]) -> None:
    body = json.dumps({"key": MASTER_IP, "value": address}).encode()
    problem = "no try was made"
    for attempt in range(1, retry.tries + 1):
        try:
            status, _ = http_request(base, "POST", body, {"Content-Type": "application/json"},
                                     timeout=timeout, cafile=cafile, limit=MAX_REPLY)
        except ContextError as error:
            status, problem = 0, error.message
        if status == 201:
            say(f"published the cluster master address {address}")
            return
        if status == 409:  # a master_ip is there already: ours from an earlier try, or a stale one
            current, _ = _read(f"{base}/{MASTER_IP}", timeout, cafile)
            if current == address:
                say(f"the cluster master address {address} was already published")
                return
            problem = f"another master address ({current}) is registered under this PIN"
        elif status:
            problem = f"HTTP {status}"
        say(f"publishing the cluster master address, try {attempt}/{retry.tries}: {problem}")
        _pause(retry, attempt)
    raise ContextError(f"could not publish the master address after {retry.tries} tries: {problem}")


def _read(url: str, timeout: float, cafile: str | None) -> tuple[str | None, str]:
    """(the value of a key, given as ``<key>: <value>`` text, or None; why it is None)."""
    try:
        status, reply = http_request(url, headers={"Accept": "text/plain"}, timeout=timeout,
                                     cafile=cafile, limit=MAX_REPLY)
    except ContextError as error:
        return None, error.message
    if status != 200:
        return None, f"HTTP {status}"
    text = reply.decode("utf-8", "replace").strip()
    key = url.rsplit("/", 1)[1]
    return (text[len(key) + 1:].strip() if text.startswith(f"{key}:") else text), ""


def _wait_for(url: str, retry: Retry, timeout: float, cafile: str | None,
              say: Callable[[str], None]) -> str:
    key = url.rsplit("/", 1)[1]
    problem = "no try was made"
    for attempt in range(1, retry.tries + 1):
        value, problem = _read(url, timeout, cafile)
        if value is not None:
            return value
        say(f"waiting for the cluster's {key}, try {attempt}/{retry.tries}: {problem}")
        _pause(retry, attempt)
    raise ContextError(f"the cluster's {key} did not appear after {retry.tries} tries (last: {problem})")
