"""The stratum server over real sockets on 127.0.0.1: files, headers, ranges, safety, geo API, CLI."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from email.utils import parsedate_to_datetime
from ipaddress import ip_address
from pathlib import Path

import pytest

from helpers import closed_by_server, serves_past_idle_connections
from squid import squid  # noqa: F401  (fixture)
from ucernvm.errors import ConfigError
from ucernvm.server import GeoDatabase, StratumServer

REPO = "test.cern.ch"
UUID = "6f1a3e6c-6b47-4c4e-9a0e-1f2d3c4b5a69"  # the caching string a proxy-less client sends
UNRESOLVABLE = "a" * 64 + ".example.org"  # a label longer than 63: refused before any lookup

# Coordinates and expected orders from cvmfs's own geo API tests (webapi/test_cvmfs_geo.py),
# with the servers given documentation addresses so that no name needs resolving.
CERN, FNAL, IHEP, RAL = "192.0.2.10", "198.51.100.10", "203.0.113.10", "2001:db8::10"
GEO_CSV = """\
# network,latitude,longitude of the test sites
network,latitude,longitude,comment
192.0.2.0/24,46.2324,6.0502,CERN
198.51.100.0/24,41.7768,-88.4604,FNAL
203.0.113.0/24,39.9289,116.3883,IHEP
2001:db8::/32,51.75,-1.25,RAL
127.0.0.0/8,39.9289,116.3883,the test client sits at IHEP
10.0.0.0/8,,,no coordinates: skipped
"""


def make_repository(root: Path) -> dict[str, bytes]:
    """A repository directory as cvmfs_server lays it out; returns {relative path: content}."""
    files = {
        ".cvmfspublished": b"Cabc\nRd41d8cd98f00b204e9800998ecf8427e\nNtest.cern.ch\n--\nsig",
        ".cvmfswhitelist": b"20240101000000\nE20990101000000\nNtest.cern.ch\n--\nsig",
        ".cvmfsreflog": b"SQLite format 3\x00" + bytes(100),
        ".cvmfs_master_replica": b"",
        "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC": os.urandom(3000),
        "data/00/0000000000000000000000000000000000000001": bytes(range(256)) * 4,
        "data/ff/ffffffffffffffffffffffffffffffffffffffff": os.urandom(300_000),  # sendfile path
        "data/12/3456789abcdef0123456789abcdef01234567-shake128P": b"",
        "meta.json": b'{"administrator": "test"}',
    }
    for name, content in files.items():
        path = root / REPO / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    base = tmp_path_factory.mktemp("stratum")
    root = base / "root"
    files = make_repository(root)
    (base / "secret").write_bytes(b"outside ROOT")
    (root / "secret-link").symlink_to(base / "secret")
    (root / REPO / "data" / "escape").symlink_to(base)
    (root / REPO / "data" / "ab").mkdir()
    (root / REPO / "data" / "ab" / "cdef").symlink_to(base / "secret")
    # Like cvmfs's .cvmfsalt-* bootstrapping shortcuts: a symlink inside ROOT is fine.
    (root / REPO / ".cvmfsalt-d3d49a").symlink_to("data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC")
    return root, files


@pytest.fixture(scope="module")
def server(tree: tuple[Path, dict[str, bytes]]) -> StratumServer:
    with StratumServer(tree[0]) as running:
        yield running


def get(server: StratumServer, path: str, method: str = "GET",
        headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


def expires_in(response: http.client.HTTPResponse) -> int:
    """Seconds from the response's Date to its Expires header (Apache's mod_expires sends both)."""
    expires, date = response.getheader("Expires"), response.getheader("Date")
    assert expires and date, "no Expires or Date header"
    return int((parsedate_to_datetime(expires) - parsedate_to_datetime(date)).total_seconds())


def raw(server: StratumServer, request: bytes) -> bytes:
    """Send bytes exactly as given (no client-side path normalisation); read until close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- files and headers --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".cvmfspublished", ".cvmfswhitelist", ".cvmfsreflog",
                                  ".cvmfs_master_replica"])
def test_cvmfs_files_expire_after_61_seconds(server, tree, name):
    response, body = get(server, f"/cvmfs/{REPO}/{name}")
    assert response.status == 200
    assert body == tree[1][name]
    assert response.getheader("Content-Type") == "application/x-cvmfs"
    assert response.getheader("Cache-Control") == "max-age=61"
    assert expires_in(response) == 61
    assert response.getheader("ETag") is None and response.getheader("Last-Modified") is None


def test_conditional_requests_get_the_whole_file(server, tree):
    """cvmfs_server's Apache unsets If-Modified-Since and sends no validators ("because of squid
    bugs"): a conditional request is answered in full, never 304 or 412."""
    for headers in ({"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, {"If-None-Match": "*"},
                    {"If-Match": '"x"'}, {"If-Unmodified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}):
        response, body = get(server, f"/cvmfs/{REPO}/.cvmfspublished", headers=headers)
        assert (response.status, body) == (200, tree[1][".cvmfspublished"])


def test_data_objects_are_cached_for_three_days(server, tree):
    name = "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC"
    response, body = get(server, f"/cvmfs/{REPO}/{name}")
    assert response.status == 200
    assert body == tree[1][name]
    assert response.getheader("Content-Type") == "application/octet-stream"
    # mod_expires' form, which cvmfs's own server test reads with sed 's/^max-age=\([0-9]*\)$/\1/'
    assert response.getheader("Cache-Control") == "max-age=259200"
    assert expires_in(response) == 259200
    assert response.getheader("Accept-Ranges") == "bytes"
    assert response.getheader("Date")


def test_json_is_short_lived(server):
    response, body = get(server, f"/cvmfs/{REPO}/meta.json")
    assert body == b'{"administrator": "test"}'
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Cache-Control") == "max-age=61"
    assert expires_in(response) == 61


def test_expires_comes_with_heads_and_ranges_but_not_with_errors(server):
    name = f"/cvmfs/{REPO}/data/00/0000000000000000000000000000000000000001"
    assert expires_in(get(server, name, method="HEAD")[0]) == 259200
    assert expires_in(get(server, name, headers={"Range": "bytes=0-9"})[0]) == 259200
    missing, _ = get(server, f"/cvmfs/{REPO}/data/00/missing")
    assert missing.getheader("Expires") is None and missing.getheader("Cache-Control") is None


def test_large_and_empty_objects(server, tree):
    for name in ("data/ff/ffffffffffffffffffffffffffffffffffffffff",
                 "data/12/3456789abcdef0123456789abcdef01234567-shake128P"):
        response, body = get(server, f"/cvmfs/{REPO}/{name}")
        assert response.status == 200
        assert body == tree[1][name]
        assert int(response.getheader("Content-Length")) == len(tree[1][name])


def test_large_object_to_a_slow_reader(server, tree):
    """More than the socket buffers hold: the sender must wait for the client, then resume."""
    content = os.urandom(8 << 20)
    (tree[0] / REPO / "data" / "fe").mkdir(exist_ok=True)
    (tree[0] / REPO / "data" / "fe" / "large").write_bytes(content)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", f"/cvmfs/{REPO}/data/fe/large")
    response = connection.getresponse()
    time.sleep(0.3)
    assert response.read() == content
    connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")  # the connection is still usable
    assert connection.getresponse().read() == tree[1][".cvmfspublished"]
    connection.close()


def test_keep_alive_serves_two_requests_on_one_connection(server, tree):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
    first = connection.getresponse()
    assert first.read() == tree[1][".cvmfspublished"]
    sock = connection.sock
    assert sock is not None and first.getheader("Connection") is None
    connection.request("GET", f"/cvmfs/{REPO}/.cvmfswhitelist")
    second = connection.getresponse()
    assert second.read() == tree[1][".cvmfswhitelist"]
    assert connection.sock is sock  # not reopened
    connection.close()


def test_pipelined_requests_and_http10_close(server, tree):
    name = f"/cvmfs/{REPO}/data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC"
    reply = raw(server, f"HEAD {name} HTTP/1.1\r\nHost: x\r\n\r\n"
                        f"GET {name} HTTP/1.0\r\n\r\n".encode())
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 3000" in head
    # The HEAD response carried no body: the next bytes are the GET's status line.
    second_head, _, body = rest.partition(b"\r\n\r\n")
    assert second_head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in second_head
    assert body == tree[1]["data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC"]


def test_head_announces_length_without_body(server, tree):
    name = "data/00/0000000000000000000000000000000000000001"
    response, body = get(server, f"/cvmfs/{REPO}/{name}", method="HEAD")
    assert response.status == 200
    assert body == b""
    assert int(response.getheader("Content-Length")) == len(tree[1][name])


def test_a_real_squid_caches_what_it_is_sent(squid, tree, capfd):
    """Behind squid, as sites run a stratum: the manifest and the objects are answered from its
    cache the second time, so the server sees each URL once."""
    names = [".cvmfspublished", "data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC",
             "data/ff/ffffffffffffffffffffffffffffffffffffffff"]
    with StratumServer(tree[0], access_log=True) as stratum:
        proxy = http.client.HTTPConnection("127.0.0.1", squid.port, timeout=10)
        for round_ in range(2):
            for name in names:
                proxy.request("GET", f"{stratum.url}/cvmfs/{REPO}/{name}")
                response = proxy.getresponse()
                assert (response.status, response.read()) == (200, tree[1][name])
                assert response.getheader("X-Cache", "").startswith("HIT" if round_ else "MISS")
        proxy.close()
    logged = capfd.readouterr().err
    assert all(logged.count(f"/cvmfs/{REPO}/{name} HTTP/1.1") == 1 for name in names)


# --- ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,start,end", [("bytes=10-19", 10, 19), ("bytes=1000-", 1000, 1023),
                                            ("bytes=-24", 1000, 1023), ("bytes=1020-5000", 1020, 1023)])
def test_single_ranges_get_206(server, tree, spec, start, end):
    name = "data/00/0000000000000000000000000000000000000001"
    response, body = get(server, f"/cvmfs/{REPO}/{name}", headers={"Range": spec})
    assert response.status == 206
    assert body == tree[1][name][start:end + 1]
    assert response.getheader("Content-Range") == f"bytes {start}-{end}/1024"


def test_range_of_a_large_object(server, tree):
    name = "data/ff/ffffffffffffffffffffffffffffffffffffffff"
    response, body = get(server, f"/cvmfs/{REPO}/{name}", headers={"Range": "bytes=100000-"})
    assert response.status == 206
    assert body == tree[1][name][100000:]


@pytest.mark.parametrize("spec", ["bytes=1024-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_ranges_get_416(server, spec):
    name = "data/00/0000000000000000000000000000000000000001"
    response, _ = get(server, f"/cvmfs/{REPO}/{name}", headers={"Range": spec})
    assert response.status == 416
    assert response.getheader("Content-Range") == "bytes */1024"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=9-3"])
def test_ranges_we_do_not_serve_get_everything(server, tree, spec):
    name = "data/00/0000000000000000000000000000000000000001"
    response, body = get(server, f"/cvmfs/{REPO}/{name}", headers={"Range": spec})
    assert response.status == 200
    assert body == tree[1][name]


def test_range_numbers_longer_than_any_file(server, tree, capfd):
    """Python's int() refuses over 4300 digits: such a number means past the end, not a crash."""
    name = f"/cvmfs/{REPO}/data/00/0000000000000000000000000000000000000001"
    huge = "9" * 5000
    response, _ = get(server, name, headers={"Range": f"bytes={huge}-"})
    assert response.status == 416
    response, body = get(server, name, headers={"Range": f"bytes=1000-{huge}"})
    assert (response.status, body) == (206, tree[1]["data/00/0000000000000000000000000000000000000001"][1000:])
    response, _ = get(server, name, headers={"Range": f"bytes=-{huge}"})
    assert response.status == 206 and response.getheader("Content-Range") == "bytes 0-1023/1024"
    assert "Traceback" not in capfd.readouterr().err


# --- errors and safety --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/cvmfs/", f"/cvmfs/{REPO}/", f"/cvmfs/{REPO}/data",
                                  f"/cvmfs/{REPO}/data/00/", f"/cvmfs/{REPO}/missing",
                                  "/cvmfs/no.such.repo/.cvmfspublished", f"/{REPO}/.cvmfspublished"])
def test_missing_files_and_directories_are_404(server, path):
    response, body = get(server, path)
    assert response.status == 404
    assert b"<" not in body  # no listing


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "BREW"])
def test_other_methods_are_405(server, method):
    response, _ = get(server, f"/cvmfs/{REPO}/.cvmfspublished", method=method)
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize("path", [
    "/cvmfs/../secret",
    f"/cvmfs/{REPO}/../../secret",
    f"/cvmfs/{REPO}/%2e%2e/%2e%2e/secret",
    f"/cvmfs/{REPO}/%2E%2E%2F%2E%2E%2Fsecret",
    f"/cvmfs/{REPO}/data/..%2f..%2f..%2fsecret",
    "/cvmfs/secret-link",
    f"/cvmfs/{REPO}/data/ab/cdef",
    f"/cvmfs/{REPO}/data/escape/secret",
    f"/cvmfs/{REPO}/data/escape//secret",
    f"/cvmfs/{REPO}//..//..//secret",
    "/cvmfs/%2fetc%2fpasswd",
    f"/cvmfs/{REPO}/.cvmfspublished%00.txt",
])
def test_traversal_out_of_root_is_refused(server, path):
    reply = raw(server, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 404 ")
    assert b"outside ROOT" not in reply and b"root:" not in reply


@pytest.mark.parametrize("path", [f"/cvmfs/{REPO}//.cvmfspublished", f"/cvmfs//{REPO}/.cvmfspublished",
                                  f"//cvmfs/{REPO}///.cvmfspublished"])
def test_repeated_slashes_count_as_one_as_apache_merges_them(server, tree, path):
    """A server URL configured with a trailing '/' makes clients ask for <url>//.cvmfspublished."""
    reply = raw(server, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(tree[1][".cvmfspublished"])


def test_non_ascii_names_raw_or_percent_encoded(server, tree):
    (tree[0] / REPO / "café").write_bytes(b"latte")
    for target in ("/cvmfs/test.cern.ch/caf\xc3\xa9".encode("latin-1"), b"/cvmfs/test.cern.ch/caf%C3%A9"):
        reply = raw(server, b"GET " + target + b" HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"latte")
    reply = raw(server, b"GET /cvmfs/test.cern.ch/caf%E9 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404 ")  # latin-1 bytes: another name


def test_symlink_inside_root_is_served(server, tree):
    response, body = get(server, f"/cvmfs/{REPO}/.cvmfsalt-d3d49a")
    assert response.status == 200
    assert body == tree[1]["data/6e/d3d49a5c64f21f36936ab350d49aaf57585b9aC"]


def test_query_strings_and_absolute_targets(server, tree):
    response, body = get(server, f"/cvmfs/{REPO}/.cvmfspublished?nocache=1")
    assert body == tree[1][".cvmfspublished"]
    response, body = get(server, f"http://127.0.0.1:{server.port}/cvmfs/{REPO}/.cvmfspublished")
    assert body == tree[1][".cvmfspublished"]
    for target in ("http://[/cvmfs/x", "http:", "ftp://[::1/"):  # not URLs: answered, not a crash
        reply = raw(server, f"GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 404 ")


@pytest.mark.parametrize("request_bytes,status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /x HTTP/2.0\r\n\r\n", b"505"),
    (b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n", b"414"),
])
def test_malformed_requests(server, request_bytes, status):
    reply = raw(server, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in reply


def test_refused_request_body_does_not_destroy_the_response(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST /cvmfs/{REPO}/x HTTP/1.1\r\nContent-Length: 300000\r\n\r\n".encode())
        try:
            sock.sendall(bytes(300_000))
        except OSError:
            pass  # the server need not read it all
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 405 ")


def test_twenty_parallel_clients_get_correct_bytes(server, tree):
    names = [name for name in tree[1] if name.startswith("data/")]
    failures: list[str] = []

    def client(index: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        try:
            for round_ in range(10):
                name = names[(index + round_) % len(names)]
                connection.request("GET", f"/cvmfs/{REPO}/{name}")
                response = connection.getresponse()
                if response.status != 200 or response.read() != tree[1][name]:
                    failures.append(f"client {index}: {name}")
        except OSError as error:
            failures.append(f"client {index}: {error}")
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_client_leaving_in_the_middle_of_a_body_leaves_the_server_serving(tmp_path, capfd):
    """The server goes on, and its log tells how much of each body went out, as Apache's does."""
    large = tmp_path / REPO / "data" / "00" / "large"
    large.parent.mkdir(parents=True)
    with open(large, "wb") as stream:
        stream.truncate(256 << 20)  # more than any socket buffers hold; sparse: no disk used
    name = f"/cvmfs/{REPO}/data/00/large"
    with StratumServer(tmp_path, access_log=True) as stratum:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", stratum.port), timeout=5) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.sendall(f"GET {name} HTTP/1.1\r\n\r\n".encode())
                received = 0
                while received < 65536:
                    received += len(sock.recv(65536))
                # then a reset, the server still sending
        response, body = get(stratum, name, method="HEAD")
        assert response.status == 200
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 4 and not any("Traceback" in line for line in lines)
    sizes = sorted(int(line.split('" 200 ')[1].split()[0].replace("-", "0")) for line in lines)
    assert sizes[0] == 0 and all(0 < size < 256 << 20 for size in sizes[1:])  # the HEAD, then the cut ones


def test_a_manifest_replaced_while_served_is_served_whole_old_or_new(tmp_path):
    """A publish renames the new manifest over the old one: every answer is one of them, entire."""
    manifest = tmp_path / REPO / ".cvmfspublished"
    manifest.parent.mkdir()
    versions = (b"old" * 2000, b"new" * 7000)  # one inline, one sent with sendfile
    manifest.write_bytes(versions[0])
    done = threading.Event()

    def publish() -> None:
        staged = manifest.with_name(".cvmfspublished.txn")
        while not done.is_set():
            for content in versions:
                staged.write_bytes(content)
                os.replace(staged, manifest)

    writer = threading.Thread(target=publish)
    seen = set()
    with StratumServer(tmp_path) as stratum:
        writer.start()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", stratum.port, timeout=5)
            answers, deadline = 0, time.monotonic() + 10
            while (answers < 300 or seen != set(versions)) and time.monotonic() < deadline:
                connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
                body = connection.getresponse().read()
                assert body in versions
                seen.add(body)
                answers += 1
                time.sleep(0.001)  # let the publisher run
            connection.close()
        finally:
            done.set()
            writer.join()
    assert seen == set(versions)


def test_a_file_rewritten_in_place_while_served_never_stalls_the_connection(tmp_path):
    """A writer that truncates and rewrites (not a publish, which renames): a response whose file
    shrank after its size was sent ends the connection at once, so the client neither waits for
    the missing bytes nor reads the next response as body."""
    manifest = tmp_path / REPO / ".cvmfspublished"
    manifest.parent.mkdir()
    manifest.write_bytes(b"A" * 5000)
    done = threading.Event()

    def rewrite() -> None:
        contents = (b"A" * 5000, b"B" * 3000)
        while not done.is_set():
            for content in contents:
                manifest.write_bytes(content)

    writer = threading.Thread(target=rewrite)
    cut, deadline = 0, time.monotonic() + 8
    with StratumServer(tmp_path) as stratum:
        writer.start()
        try:
            connection = http.client.HTTPConnection("127.0.0.1", stratum.port, timeout=2)
            while cut < 2 and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
                    response = connection.getresponse()
                    body = response.read()
                    assert response.status == 200 and set(body) <= set(b"AB")
                except http.client.IncompleteRead:
                    cut += 1
                    connection.close()
                assert time.monotonic() - started < 1, "the client waited for bytes that never came"
        finally:
            done.set()
            writer.join()
    connection.close()


# --- server object ------------------------------------------------------------------------------


def test_latency_delays_every_request(tree):
    with StratumServer(tree[0], latency=0.2) as slow:
        started = time.monotonic()
        response, _ = get(slow, f"/cvmfs/{REPO}/.cvmfspublished")
        assert response.status == 200
        assert time.monotonic() - started >= 0.2
        slow.latency = 0
        started = time.monotonic()
        get(slow, f"/cvmfs/{REPO}/.cvmfspublished")
        assert time.monotonic() - started < 0.2


def test_stop_does_not_wait_out_the_latency_of_requests_in_flight(tree):
    stratum = StratumServer(tree[0], latency=30).start()
    failures: list[Exception] = []

    def client() -> None:
        try:
            get(stratum, f"/cvmfs/{REPO}/.cvmfspublished")
        except (http.client.HTTPException, OSError) as error:
            failures.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(0.3)  # the request is waiting out its latency
    started = time.monotonic()
    stratum.stop()
    assert time.monotonic() - started < 2
    thread.join(timeout=10)
    assert len(failures) == 1  # the client saw the server go, unanswered


def test_stop_cuts_open_connections(tree):
    server = StratumServer(tree[0]).start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
    assert connection.getresponse().read() == tree[1][".cvmfspublished"]
    port = server.port
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2
    with pytest.raises((http.client.HTTPException, OSError)):
        connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
        connection.getresponse().read()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_a_client_sending_its_request_slowly_is_cut_off(tree):
    """Slowloris: a header line now and then must not hold a connection (and a thread) forever."""
    with StratumServer(tree[0], idle_timeout=1.0) as stratum:
        slow = socket.create_connection(("127.0.0.1", stratum.port), timeout=5)
        slow.sendall(f"GET /cvmfs/{REPO}/.cvmfspublished HTTP/1.1\r\n".encode())
        started = time.monotonic()
        try:
            while time.monotonic() - started < 8:
                time.sleep(0.2)
                slow.sendall(b"X-Slow: 1\r\n")
                assert get(stratum, f"/cvmfs/{REPO}/.cvmfspublished")[0].status == 200
        except OSError:
            pass  # the server has closed it
        assert closed_by_server(slow, within=1)
        assert time.monotonic() - started < 6  # its deadline was 1 s: not the trickle's 8 s
        slow.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(tree):
    with StratumServer(tree[0], idle_timeout=0.5) as stratum:
        connection = http.client.HTTPConnection("127.0.0.1", stratum.port, timeout=5)
        connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
        assert connection.getresponse().read() == tree[1][".cvmfspublished"]
        assert closed_by_server(connection.sock, within=2)
        connection.close()


def test_at_the_connection_limit_a_new_client_closes_the_idlest(tree):
    with StratumServer(tree[0], max_connections=3) as stratum:
        idle = [socket.create_connection(("127.0.0.1", stratum.port), timeout=5) for _ in range(3)]
        time.sleep(0.1)  # in this order
        started = time.monotonic()
        response, body = get(stratum, f"/cvmfs/{REPO}/.cvmfspublished")
        assert (response.status, body) == (200, tree[1][".cvmfspublished"])
        assert time.monotonic() - started < 5  # not the idle timeout of 30 s
        assert closed_by_server(idle[0], within=1)
        assert not closed_by_server(idle[2], within=0.2)
        for sock in idle:
            sock.close()


def test_idle_connections_beyond_the_descriptor_limit_do_not_lock_out_clients(tree):
    """With few file descriptors, hundreds of idle connections: a client is still served at once,
    and the server does not spin on a failing accept()."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    few_descriptors = "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\n"
    process = subprocess.Popen(
        [sys.executable, "-c", few_descriptors + SERVE_COMMAND, "serve", str(tree[0]), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    port = int(process.stdout.readline().strip().rsplit(":", 1)[1])

    def answered() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
        body = connection.getresponse().read()
        connection.close()
        return body == tree[1][".cvmfspublished"]

    assert serves_past_idle_connections(process, port, answered)


def test_busy_port_and_missing_root_are_config_errors(server, tmp_path):
    with pytest.raises(ConfigError, match="cannot listen"):
        StratumServer(server.root, port=server.port).start()
    with pytest.raises(ConfigError, match="not a directory"):
        StratumServer(tmp_path / "nope")


def test_access_log_writes_one_line_per_request(tree, capfd):
    with StratumServer(tree[0], access_log=True) as logged:
        get(logged, f"/cvmfs/{REPO}/.cvmfspublished", headers={"User-Agent": "cvmfs Fuse 2.12.0"})
        get(logged, f"/cvmfs/{REPO}/missing", method="HEAD")
    # Each request's thread writes its line when it is done: the order of the lines is the threads'.
    lines = sorted(capfd.readouterr().err.splitlines(), key=lambda line: "HEAD" in line)
    assert len(lines) == 2
    # Apache's combined format, as a stratum's access_log has it.
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        rf'"GET /cvmfs/{REPO}/\.cvmfspublished HTTP/1\.1" 200 '
                        rf'{len(tree[1][".cvmfspublished"])} "-" "cvmfs Fuse 2\.12\.0"', lines[0])
    assert f'"HEAD /cvmfs/{REPO}/missing HTTP/1.1" 404 - "-" "-"' in lines[1]


def test_access_log_escapes_what_the_client_sent(tree, capfd):
    """Quotes, control characters and non-ASCII bytes cannot forge a log line or a terminal's state."""
    with StratumServer(tree[0], access_log=True) as logged:
        raw(logged, b'GET /x"\x1b[2J\xff\r HTTP/1.1\r\nUser-Agent: a" 200 1 "b\r\nConnection: close\r\n\r\n')
    (line,) = capfd.readouterr().err.splitlines()
    assert line.endswith(r'"GET /x\"\x1b[2J\xff\r HTTP/1.1" 404 10 "-" "a\" 200 1 \"b"')


def test_an_access_log_that_cannot_be_written_does_not_disturb_serving(tree):
    """A full disk under the log: every request is still answered on its kept-alive connection,
    and the server still stops cleanly."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with open("/dev/full", "w") as full:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE_COMMAND, "serve", str(tree[0]), "--port", "0", "--access-log"],
            stdout=subprocess.PIPE, stderr=full, text=True, env=env)
    try:
        port = int(process.stdout.readline().strip().rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):
            connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
            assert connection.getresponse().read() == tree[1][".cvmfspublished"]
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


# --- geo API ------------------------------------------------------------------------------------


def geo(server: StratumServer, request: str, headers: dict[str, str] | None = None
        ) -> tuple[int, str, http.client.HTTPResponse]:
    response, body = get(server, f"/cvmfs/{REPO}/api/v1.0/geo/{request}", headers=headers)
    return response.status, body.decode(), response


def test_geo_without_database_prefers_the_same_host_then_subnet(server):
    status, body, response = geo(server, f"{UUID}/10.0.0.1,{UNRESOLVABLE},127.0.0.2,127.0.0.1")
    assert (status, body) == (200, "4,3,1,2\n")
    assert response.getheader("Content-Type") == "text/plain"
    assert response.getheader("Cache-Control") == "max-age=3600"


def test_geo_ties_keep_the_given_order(server):
    # localhost is 127.0.0.1 (/etc/hosts): as near as the literal, so the given order decides.
    assert geo(server, f"{UUID}/10.1.1.1,localhost,127.0.0.1")[:2] == (200, "2,3,1\n")
    assert geo(server, f"{UUID}/10.1.1.1,127.0.0.1,localhost")[:2] == (200, "2,3,1\n")


def test_geo_locates_the_named_proxy_instead_of_the_client(server):
    # The proxy 10.1.2.3 is the reference point, not the connecting 127.0.0.1.
    assert geo(server, "10.1.2.3/127.0.0.1,10.200.0.1,10.1.2.200")[:2] == (200, "3,2,1\n")


def test_geo_an_empty_name_goes_last_as_one_that_cannot_be_located(server):
    """As cvmfs_geo.py: a trailing comma's empty name is answered for, last, so the count stays the client's."""
    assert geo(server, f"{UUID}/10.0.0.1,127.0.0.1,")[:2] == (200, "2,1,3\n")
    assert geo(server, f"{UUID}/,127.0.0.1")[:2] == (200, "2,1\n")
    assert geo(server, f"{UUID}/127.0.0.1,+PXYSEP+,")[:2] == (200, "1,3,2\n")
    assert geo(server, f"{UUID}/,")[:2] == (400, "Bad Request: no server name resolves\n")


def test_geo_a_malformed_name_goes_last_as_one_that_cannot_be_located(server):
    """As cvmfs_geo.py: a name with characters no host name has, or too long, is sorted last, not refused."""
    too_long = "a" * 300
    assert geo(server, f"{UUID}/a%20b,10.0.0.1,127.0.0.1")[:2] == (200, "3,2,1\n")
    assert geo(server, f"{UUID}/{too_long},127.0.0.1,+PXYSEP+,127.0.0.1%20x")[:2] == (200, "2,1,4,3\n")
    assert geo(server, f"{UUID}/a%20b,{too_long}")[:2] == (400, "Bad Request: no server name resolves\n")


def test_geo_proxy_separator_without_database(server):
    # Proxies 10.9.9.9 and 127.0.0.5: the nearer (127.0.0.5) becomes the reference for the hosts.
    status, body, _ = geo(server, f"{UUID}/10.0.0.1,127.0.0.9,+PXYSEP+,10.9.9.9,127.0.0.5")
    assert (status, body) == (200, "2,1,5,4,3\n")


def test_geo_a_second_proxy_separator_is_a_proxy_that_cannot_be_located(server):
    """As cvmfs_geo.py: the request splits at the first separator; a later one goes last among the proxies."""
    status, body, _ = geo(server, f"{UUID}/127.0.0.1,+PXYSEP+,10.9.9.9,+PXYSEP+,127.0.0.5")
    assert (status, body) == (200, "1,5,3,4,2\n")


@pytest.fixture(scope="module")
def geo_server(tree, tmp_path_factory) -> StratumServer:
    csv = tmp_path_factory.mktemp("geo") / "geo.csv"
    csv.write_text(GEO_CSV)
    with StratumServer(tree[0], geo_db=csv) as running:
        yield running


@pytest.mark.parametrize("proxy,servers,expected", [
    (RAL, [CERN, FNAL, IHEP, RAL], "4,1,2,3"),
    (RAL, [RAL, IHEP, FNAL, CERN], "1,4,3,2"),
    (IHEP, [RAL, IHEP, FNAL, CERN], "2,1,4,3"),
    (CERN, [FNAL, IHEP, CERN, RAL], "3,4,1,2"),
    (FNAL, [IHEP, CERN, RAL, FNAL], "4,3,2,1"),
])
def test_geo_database_orders_by_great_circle_distance(geo_server, proxy, servers, expected):
    status, body, _ = geo(geo_server, f"{proxy}/{','.join(servers)}")
    assert (status, body) == (200, expected + "\n")


def test_geo_database_locates_client_then_forwarded_for(geo_server):
    # No resolvable proxy: the client 127.0.0.1 is at IHEP in the database.
    servers = ",".join([RAL, IHEP, UNRESOLVABLE, FNAL, CERN])
    assert geo(geo_server, f"{UUID}/{servers}")[:2] == (200, "2,1,5,4,3\n")
    # Behind a reverse proxy, the last X-Forwarded-For address counts (here: CERN).
    status, body, _ = geo(geo_server, f"{UUID}/{FNAL},{IHEP},{CERN},{RAL}",
                          headers={"X-Forwarded-For": "198.51.100.1, 192.0.2.99"})
    assert (status, body) == (200, "3,4,1,2\n")


def test_geo_database_proxy_separator(geo_server):
    # Client at IHEP; of the proxies, RAL is nearer than FNAL, so the hosts are sorted from RAL.
    status, body, _ = geo(geo_server, f"{UUID}/{IHEP},{FNAL},{CERN},+PXYSEP+,198.51.100.7,{RAL}")
    assert (status, body) == (200, "3,2,1,6,5,4\n")
    assert len(body.strip().split(",")) == 6


def test_geo_database_unknown_client_is_400(tree, tmp_path):
    csv = tmp_path / "geo.csv"
    csv.write_text(f"network,latitude,longitude\n{CERN}/32,46.2324,6.0502\n")
    with StratumServer(tree[0], geo_db=csv) as cern_only:
        status, body, response = geo(cern_only, f"{UUID}/{CERN}",
                                     headers={"X-Forwarded-For": "not-an-address"})
    assert (status, body) == (400, "Bad Request: remote addr not found in database\n")
    assert response.getheader("Cache-Control") == "max-age=300"


@pytest.mark.parametrize("request_path,reason", [
    (f"api/v1.0/geo/{UUID}", "no slash in geo path"),
    (f"api/v1.0/geo/{UUID}/" + ",".join(["127.0.0.1"] * 101), "more than 100 servers"),
    (f"api/v1.0/geo/{UUID}/{UNRESOLVABLE}", "no server name resolves"),
    (f"api/v1.0/where/{UUID}/127.0.0.1", "unrecognized api function"),
    ("api/v1.0", "malformed api URL"),
])
def test_malformed_geo_requests_are_400(server, request_path, reason):
    response, body = get(server, f"/cvmfs/{REPO}/{request_path}")
    assert response.status == 400
    assert body.decode().startswith(f"Bad Request: {reason}")
    assert response.getheader("Cache-Control") == "max-age=300"


def test_geo_database_without_any_located_server_is_400(geo_server):
    status, body, _ = geo(geo_server, f"{UUID}/10.0.0.1,172.16.0.1")
    assert (status, body) == (400, "Bad Request: no server addr found in database\n")


def test_geo_for_a_missing_repository_is_404(server):
    response, _ = get(server, f"/cvmfs/no.such.repo/api/v1.0/geo/{UUID}/127.0.0.1")
    assert response.status == 404


def test_geo_database_file_errors(tmp_path):
    bad_header = tmp_path / "header.csv"
    bad_header.write_text("net,lat,lon\n10.0.0.0/8,1,2\n")
    with pytest.raises(ConfigError, match="missing column"):
        GeoDatabase.load(bad_header)
    bad_row = tmp_path / "row.csv"
    bad_row.write_text("network,latitude,longitude\n10.0.0.0/33,1,2\n")
    with pytest.raises(ConfigError, match="bad row"):
        GeoDatabase.load(bad_row)
    with pytest.raises(ConfigError, match="cannot read"):
        GeoDatabase.load(tmp_path / "missing.csv")


def test_geo_database_longest_prefix_wins(tmp_path):
    csv = tmp_path / "geo.csv"
    csv.write_text("network,latitude,longitude\n10.0.0.0/8,1,1\n10.1.0.0/16,2,2\n")
    db = GeoDatabase.load(csv)
    assert db.lookup(ip_address("10.1.2.3")) == (2.0, 2.0)
    assert db.lookup(ip_address("10.2.0.1")) == (1.0, 1.0)
    assert db.lookup(ip_address("11.0.0.1")) is None


# --- the command --------------------------------------------------------------------------------

# Runs the serve command's own parser and function, as `ucernvm serve` does.
SERVE_COMMAND = """
import argparse, sys
from ucernvm.commands import serve
parser = argparse.ArgumentParser(prog="ucernvm")
serve.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_serve_command_prints_its_url_and_stops_on_sigterm(tree, tmp_path):
    csv = tmp_path / "geo.csv"
    csv.write_text(GEO_CSV)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_COMMAND, "serve", str(tree[0]), "--port", "0", "--access-log",
         "--geo-db", str(csv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline().strip()
        assert line.startswith(f"serving {tree[0]} on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
        assert connection.getresponse().read() == tree[1][".cvmfspublished"]
        connection.request("GET", f"/cvmfs/{REPO}/api/v1.0/geo/{RAL}/{CERN},{FNAL},{IHEP},{RAL}")
        assert connection.getresponse().read() == b"4,1,2,3\n"  # from the geo database
        process.send_signal(signal.SIGTERM)  # with the keep-alive connection still open
        assert process.wait(timeout=10) == 0
        assert f"GET /cvmfs/{REPO}/.cvmfspublished" in process.stderr.read()
        connection.close()
    finally:
        process.kill()
        process.wait()


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`ucernvm serve ARGS` expected to stop at once (on bad input): its outcome."""
    return subprocess.run([sys.executable, "-m", "ucernvm", "serve", *args], capture_output=True, text=True,
                          timeout=30, cwd=Path(__file__).resolve().parents[1])


def test_serve_help_describes_the_online_definitions_file():
    """OnlineService.load's errors send the reader to `ucernvm serve --help` for the file format."""
    result = run_serve("--help")
    assert result.returncode == 0
    for word in ('"contexts"', '"user_data_file"', '"secret"', '"pins"', '"clusters"', '"replies"',
                 '"pin_lifetime"', '"cluster_lifetime"', "--online-port", "--access-log", "SIGTERM"):
        assert word in result.stdout


def test_serve_refuses_a_repository_given_for_root(tree):
    result = run_serve(str(tree[0] / REPO), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith(f"ucernvm: error: {tree[0] / REPO} is a repository itself")
    assert f"`ucernvm serve {tree[0]}` serves it at /cvmfs/{REPO}/" in result.stderr


def test_serve_refuses_an_online_port_that_is_no_port(tree, tmp_path):
    (tmp_path / "online.json").write_text('{"contexts": []}')
    result = run_serve(str(tree[0]), "--port", "0", "--online", str(tmp_path / "online.json"),
                       "--online-port", "70000")
    assert result.returncode == 2
    assert result.stderr.startswith("ucernvm: error: --online-port 70000 is not a TCP port")
    assert "Traceback" not in result.stderr


def test_serve_warns_of_a_root_without_repositories(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "ucernvm", "serve", str(tmp_path), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[1])
    try:
        assert process.stdout.readline().startswith(f"serving {tmp_path} on http://")
        assert process.stderr.readline().startswith(f"ucernvm: warning: no repository in {tmp_path} yet")
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_serve_command_stops_on_sigint(tree):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    process = subprocess.Popen([sys.executable, "-c", SERVE_COMMAND, "serve", str(tree[0]), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().startswith("serving ")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == ""  # no KeyboardInterrupt traceback
    finally:
        process.kill()
        process.wait()


def test_serve_command_whose_output_cannot_be_written_serves_all_the_same(tree):
    """stdout on a full disk: the URL line is lost, not the server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with open("/dev/full", "w") as full:
        process = subprocess.Popen([sys.executable, "-c", SERVE_COMMAND, "serve", str(tree[0]), "--port", str(port)],
                                   stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", f"/cvmfs/{REPO}/.cvmfspublished")
                assert connection.getresponse().read() == tree[1][".cvmfspublished"]
                connection.close()
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        else:
            pytest.fail(f"the server did not come up: {process.stderr.read()}")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == ""
    finally:
        process.kill()
        process.wait()


def test_serves_a_real_cvmfs_server_repository(legacy_pristine):
    """Every file of the repository written by cvmfs_server, byte for byte, over one connection;
    each data object's SHA-1 matches its name (what a client verifies)."""
    served = legacy_pristine.base / "srv" / "cvmfs"
    repository = served / legacy_pristine.fqrn
    files = sorted(p for p in repository.rglob("*") if p.is_file())
    assert len(files) > 10
    with StratumServer(served) as stratum:
        connection = http.client.HTTPConnection("127.0.0.1", stratum.port, timeout=10)
        for path in files:
            relative = path.relative_to(repository).as_posix()
            connection.request("GET", f"/cvmfs/{legacy_pristine.fqrn}/{relative}")
            response = connection.getresponse()
            body = response.read()
            assert (response.status, body) == (200, path.read_bytes()), relative
            if relative.startswith("data/"):
                digest = relative[5:7] + relative[8:46]  # data/XX/<38 hex><suffix>
                assert hashlib.sha1(body).hexdigest() == digest
        connection.close()


def test_ipv6_loopback_and_mixed_address_families(tree):
    try:
        stratum = StratumServer(tree[0], bind="::1").start()
    except ConfigError:
        pytest.skip("no IPv6 loopback on this machine")
    with stratum:
        assert stratum.url == f"http://[::1]:{stratum.port}"
        connection = http.client.HTTPConnection("::1", stratum.port, timeout=10)
        connection.request("GET", f"/cvmfs/{REPO}/api/v1.0/geo/{UUID}/127.0.0.1,::2,::1")
        response = connection.getresponse()
        # The client is ::1: an IPv4 server shares no prefix with it and goes after both.
        assert (response.status, response.read()) == (200, b"3,2,1\n")
        connection.close()
