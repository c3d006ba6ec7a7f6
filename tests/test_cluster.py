"""Cluster pairing: the cluster service's REST API, and masters and workers pairing through it."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from ucernvm.context.cluster import DELAY, JITTER, PLACEHOLDER, TRIES, Retry, pair_cluster
from ucernvm.context.online import http_request
from ucernvm.server.online import OnlineServer, OnlineService

WORKER_DATA = b"[example]\nmaster=###MASTER_IP_PLACEHOLDER###\nagain=###MASTER_IP_PLACEHOLDER###\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """Records the pauses between tries, and can act at each one (another machine's move)."""

    def __init__(self, action=None) -> None:
        self.pauses: list[float] = []
        self.action = action

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.action is not None:
            self.action(len(self.pauses))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(clock: Clock) -> OnlineService:
    return OnlineService(clock=clock)


@pytest.fixture
def server(service: OnlineService):
    with OnlineServer(service) as running:
        yield running


def api(server: OnlineServer, method: str, path: str, body: object = None, accept: str = ""):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if accept:
        headers["Accept"] = accept
    return http_request(f"{server.url}/api/v1/{path}", method, data, headers)


# --- the service --------------------------------------------------------------------------------


def test_cluster_lifecycle(server: OnlineServer) -> None:
    status, body = api(server, "POST", "clusters", {})
    assert status == 201
    created = json.loads(body)
    pin = created["pin"]
    assert len(pin) == 12 and pin.isalnum() and pin == pin.lower() and created["creation_time"].endswith("Z")
    assert json.loads(api(server, "GET", f"clusters/{pin}")[1]) == created
    assert api(server, "GET", f"clusters/{pin}/keys") == (200, b"[]")

    assert api(server, "POST", f"clusters/{pin}/keys", {"key": "master_ip", "value": "10.0.0.5"}) == \
        (201, b'{"key": "master_ip", "value": "10.0.0.5"}')
    assert api(server, "POST", f"clusters/{pin}/keys", {"key": "master_ip", "value": "10.0.0.6"})[0] == 409
    assert api(server, "GET", f"clusters/{pin}/keys/master_ip") == (200, b"master_ip: 10.0.0.5")
    assert json.loads(api(server, "GET", f"clusters/{pin}/keys/master_ip", accept="application/json")[1]) == \
        {"key": "master_ip", "value": "10.0.0.5"}
    assert api(server, "GET", f"clusters/{pin}/keys/master_ip", accept="text/plain, application/json")[1] == \
        b"master_ip: 10.0.0.5"

    assert api(server, "PATCH", f"clusters/{pin}/keys/master_ip", {"value": "10.0.0.7"}) == \
        (200, b"master_ip: 10.0.0.7")
    assert api(server, "PUT", f"clusters/{pin}/keys/master_ip", {"value": "x"})[0] == 400  # PUT needs both
    assert api(server, "PUT", f"clusters/{pin}/keys/master_ip", {"key": "master_ip", "value": "10.0.0.8"})[0] == 200
    assert json.loads(api(server, "GET", f"clusters/{pin}/keys")[1]) == [{"key": "master_ip", "value": "10.0.0.8"}]

    assert api(server, "DELETE", f"clusters/{pin}/keys/master_ip") == (204, b"")
    assert api(server, "GET", f"clusters/{pin}/keys/master_ip") == (404, b"")
    assert json.loads(api(server, "GET", f"clusters/{pin}/keys/master_ip", accept="application/json")[1]) == \
        {"detail": "Not found."}
    assert api(server, "DELETE", f"clusters/{pin}") == (204, b"")
    assert api(server, "GET", f"clusters/{pin}")[0] == 404


@pytest.mark.parametrize("body, field", [
    (b"{not json", "detail"),
    ([1, 2], "non_field_errors"),
    ({"value": "1.2.3.4"}, "key"),
    ({"key": "master_ip"}, "value"),
    ({"key": "master_ip", "value": "  "}, "value"),
    ({"key": "k" * 101, "value": "v"}, "key"),
    ({"key": "master_ip", "value": {"nested": 1}}, "value"),
])
def test_bad_key_bodies_are_400(server: OnlineServer, service: OnlineService, body: object, field: str) -> None:
    pin = service.add_cluster()
    status, reply = api(server, "POST", f"clusters/{pin}/keys", body)
    assert status == 400 and field in json.loads(reply)


def test_unknown_clusters_methods_and_paths(server: OnlineServer, clock: Clock, service: OnlineService) -> None:
    assert api(server, "POST", "clusters/nosuchclustr/keys", {"key": "a", "value": "b"})[0] == 404
    assert api(server, "GET", "clusters/nosuchclustr/keys") == (200, b"[]")  # a filtered list, as the service
    assert api(server, "GET", "clusters")[0] == 405
    assert api(server, "GET", "clusters/SHOUTING1234")[0] == 404  # pins are [a-z0-9]{12}
    assert api(server, "GET", "clusters/abc")[0] == 404
    pin = service.add_cluster()
    clock.now += 24 * 3600 + 1  # clusters expire after 24 hours
    assert api(server, "GET", f"clusters/{pin}")[0] == 404


def test_a_chunked_body_is_read_whole(server: OnlineServer, service: OnlineService) -> None:
    """HTTP/1.1 clients that do not know a body's length in advance send it in chunks; the service reads
    them (size lines with extensions, trailers) and the connection serves the next request too."""
    pin = service.add_cluster()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        pieces = [b'{"key": "master_ip", ', b'"value": "10.0.0.5"}']
        connection.request("POST", f"/api/v1/clusters/{pin}/keys", iter(pieces),
                           {"Content-Type": "application/json"}, encode_chunked=True)
        reply = connection.getresponse()
        assert (reply.status, json.loads(reply.read())) == (201, {"key": "master_ip", "value": "10.0.0.5"})
        raw = (f"PATCH /api/v1/clusters/{pin}/keys/master_ip HTTP/1.1\r\nHost: x\r\n"
               "Transfer-Encoding: chunked\r\n\r\n"
               '6;note=x\r\n{"valu\r\nf\r\ne": "10.0.0.7"}\r\n0\r\nX-Trailer: 1\r\n\r\n').encode()
        connection.sock.sendall(raw)
        reply = http.client.HTTPResponse(connection.sock)
        reply.begin()
        assert (reply.status, reply.read()) == (200, b"master_ip: 10.0.0.7")
    finally:
        connection.close()


@pytest.mark.parametrize("coding, chunks, status", [
    ("chunked", b"zz\r\n{}\r\n0\r\n\r\n", 400),  # not a hexadecimal size
    ("chunked", b"0x2\r\n{}\r\n0\r\n\r\n", 400),
    ("chunked", b"2\r\n{}XX0\r\n\r\n", 400),  # a chunk longer than its size
    ("chunked", b"10001\r\n", 413),  # more than the service takes
    ("gzip, chunked", b"2\r\n{}\r\n0\r\n\r\n", 501),
])
def test_a_bad_or_oversized_chunked_body_is_refused(server: OnlineServer, service: OnlineService,
                                                      coding: str, chunks: bytes, status: int) -> None:
    pin = service.add_cluster()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /api/v1/clusters/{pin}/keys HTTP/1.1\r\nHost: x\r\n"
                     f"Transfer-Encoding: {coding}\r\n\r\n".encode() + chunks)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == status and reply.getheader("Connection") == "close"
    assert service.clusters("GET", f"/api/v1/clusters/{pin}/keys", b"", "")[2] == b"[]"


# --- pairing ------------------------------------------------------------------------------------


def test_the_defaults_are_ucernvms() -> None:
    assert (TRIES, DELAY, JITTER) == (50, 25.0, 9.0)
    assert PLACEHOLDER == b"###MASTER_IP_PLACEHOLDER###"


def test_master_then_worker(server: OnlineServer, service: OnlineService) -> None:
    pin = service.add_cluster()
    logged: list[str] = []
    master = pair_cluster(b"master data", pin, True, server.url, ip="10.1.2.3", retry=Retry(3, 0, 0),
                          log=logged.append)
    assert master.warning is None and master.user_data == b"master data" and master.master_ip == "10.1.2.3"
    assert "10.1.2.3" in logged[-1]
    assert api(server, "GET", f"clusters/{pin}/keys/master_ip")[1] == b"master_ip: 10.1.2.3"

    api(server, "POST", f"clusters/{pin}/keys", {"key": "master_ready", "value": "true"})  # the master's OS
    worker = pair_cluster(WORKER_DATA, pin, False, server.url, retry=Retry(3, 0, 0))
    assert worker.warning is None and worker.master_ip == "10.1.2.3"
    assert worker.user_data == b"[example]\nmaster=10.1.2.3\nagain=10.1.2.3\n"


def test_a_master_finds_its_own_address(server: OnlineServer, service: OnlineService) -> None:
    pin = service.add_cluster()
    result = pair_cluster(b"", pin, True, server.url, retry=Retry(1, 0, 0))
    assert result.master_ip == "127.0.0.1" and result.warning is None


def test_a_master_publishing_again_is_fine(server: OnlineServer, service: OnlineService) -> None:
    pin = service.add_cluster(keys={"master_ip": "10.1.2.3"})
    sleeps = Sleeps()
    result = pair_cluster(b"", pin, True, server.url, ip="10.1.2.3", retry=Retry(3, 5, 0, sleeps))
    assert result.warning is None and sleeps.pauses == []


def test_a_master_retries_until_a_stale_address_is_gone(server: OnlineServer, service: OnlineService) -> None:
    pin = service.add_cluster(keys={"master_ip": "10.9.9.9"})
    sleeps = Sleeps(lambda count: count == 2 and api(server, "DELETE", f"clusters/{pin}/keys/master_ip"))
    result = pair_cluster(b"", pin, True, server.url, ip="10.1.2.3", retry=Retry(5, 25, 9, sleeps))
    assert result.warning is None and len(sleeps.pauses) == 2
    assert all(25 <= pause <= 34 for pause in sleeps.pauses)  # 25 s plus 0-9 s, as µCernVM
    assert api(server, "GET", f"clusters/{pin}/keys/master_ip")[1] == b"master_ip: 10.1.2.3"


def test_a_master_gives_up_after_its_tries(server: OnlineServer, service: OnlineService) -> None:
    pin = service.add_cluster(keys={"master_ip": "10.9.9.9"})
    sleeps = Sleeps()
    result = pair_cluster(b"data", pin, True, server.url, ip="10.1.2.3", retry=Retry(3, 1, 0, sleeps))
    assert result.user_data == b"data" and result.master_ip is None
    assert "after 3 tries: another master address (10.9.9.9)" in result.warning
    assert sleeps.pauses == [1, 1]  # no pause after the last try


def test_a_worker_whose_master_never_gets_ready_gives_up(server: OnlineServer, service: OnlineService) -> None:
    pin = service.add_cluster(keys={"master_ip": "10.1.2.3"})  # published, but never ready
    started = time.monotonic()
    result = pair_cluster(WORKER_DATA, pin, False, server.url, retry=Retry(4, 0.05, 0.01))
    assert time.monotonic() - started < 2
    assert result.user_data == WORKER_DATA
    assert result.warning == (f"cluster pairing (worker, PIN {pin}) failed: the cluster's master_ready did not "
                              "appear after 4 tries (last: HTTP 404)")


def test_a_worker_waits_for_a_master_booting_at_the_same_time(server: OnlineServer,
                                                              service: OnlineService) -> None:
    pin = service.add_cluster()
    results = []
    worker = threading.Thread(target=lambda: results.append(
        pair_cluster(WORKER_DATA, pin, False, server.url, retry=Retry(100, 0.02, 0))))
    worker.start()
    time.sleep(0.1)
    assert pair_cluster(b"", pin, True, server.url, ip="192.0.2.7", retry=Retry(3, 0, 0)).warning is None
    time.sleep(0.1)
    api(server, "POST", f"clusters/{pin}/keys", {"key": "master_ready", "value": "1"})
    worker.join(10)
    assert results[0].warning is None and b"master=192.0.2.7\n" in results[0].user_data


def test_an_unreachable_service_is_a_warning(server: OnlineServer) -> None:
    url = server.url
    server.stop()
    sleeps = Sleeps()
    for master in (True, False):
        result = pair_cluster(WORKER_DATA, "abcdefghij12", master, url, ip="10.0.0.1", retry=Retry(2, 3, 0, sleeps))
        assert result.user_data == WORKER_DATA and "cannot reach" in result.warning
    assert sleeps.pauses == [3, 3]


@pytest.mark.parametrize("value", ["10.0.0.1; reboot", "a\nb", "x" * 300, ""])
def test_a_worker_refuses_a_master_address_that_is_not_one(server: OnlineServer, service: OnlineService,
                                                           value: str) -> None:
    pin = service.add_cluster(keys={"master_ready": "1", "master_ip": value})
    result = pair_cluster(WORKER_DATA, pin, False, server.url, retry=Retry(1, 0, 0))
    assert result.user_data == WORKER_DATA and "is not an IP address or host name" in result.warning


def test_a_malformed_cluster_pin_makes_no_request(server: OnlineServer, service: OnlineService) -> None:
    result = pair_cluster(WORKER_DATA, "../../api/context?x", False, server.url, retry=Retry(50, 25, 9))
    assert result.user_data == WORKER_DATA and "cluster pairing skipped" in result.warning
