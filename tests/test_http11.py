"""The plain-HTTP/1.1 client against a scripted server on 127.0.0.1 that sends exact bytes."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from ucernvm.client.http11 import ConnectionPool, HttpFailure, Response

CLOSE = b""  # in a script: close the connection now (after the answers before it)
DROP = b"drop"  # in a script: read the next request, then close without an answer


class ScriptedServer:
    """Answers the n-th request on a connection with ``script[n]``; records the request heads."""

    def __init__(self, *scripts: list[bytes]) -> None:
        self.scripts = list(scripts)  # one per accepted connection; the last one repeats
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            script = self.scripts[min(self.connections, len(self.scripts) - 1)]
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection, script), daemon=True).start()

    def _serve(self, connection: socket.socket, script: list[bytes]) -> None:
        with connection:
            reader = connection.makefile("rb")
            for answer in script:
                if answer is CLOSE:
                    return
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                self.requests.append(head)
                if answer is DROP:
                    return
                connection.sendall(answer)
            reader.read()  # then wait for the client to close

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    pool = ConnectionPool()
    yield pool
    pool.clear()


def body(response: Response) -> bytes:
    parts = []
    while chunk := response.read1(7):  # small reads cross every framing boundary
        parts.append(chunk)
    response.release_conn()
    return b"".join(parts)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_kept_alive_connection_serves_the_next_request(pool: ConnectionPool) -> None:
    server = ScriptedServer([OK, OK])
    for _ in range(2):
        response = pool.request("GET", f"{server.url}/cvmfs/x/data/ab/cd", {"User-Agent": "cvmfs t"}, 5)
        assert response.status == 200 and body(response) == b"hello"
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /cvmfs/x/data/ab/cd HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nUser-Agent: cvmfs t\r\n" in server.requests[0]


def test_chunked_body_with_extensions_and_trailers(pool: ConnectionPool) -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;name=x\r\nwiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: t\r\n\r\n")
    server = ScriptedServer([chunked, OK])
    assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"wikipedia in \r\n\r\nchunks."
    assert body(pool.request("GET", server.url + "/b", {}, 5)) == b"hello"
    assert server.connections == 1  # the chunked body was read to its end: the connection is reusable


def test_body_until_the_connection_closes(pool: ConnectionPool) -> None:
    server = ScriptedServer([b"HTTP/1.0 200 OK\r\n\r\nall of it", CLOSE])
    assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"all of it"


def test_connection_close_is_not_reused(pool: ConnectionPool) -> None:
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"])
    for _ in range(2):
        assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"ok"
    assert server.connections == 2


def test_interim_response_is_skipped_and_204_has_no_body(pool: ConnectionPool) -> None:
    server = ScriptedServer([b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"HTTP/1.1 204 No Content\r\n\r\n", OK])
    assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"hello"
    response = pool.request("GET", server.url + "/b", {}, 5)
    assert response.status == 204 and body(response) == b""
    assert body(pool.request("GET", server.url + "/c", {}, 5)) == b"hello"
    assert server.connections == 1


def test_a_kept_alive_connection_closed_by_the_server_is_replaced(pool: ConnectionPool) -> None:
    server = ScriptedServer([OK, CLOSE], [OK])  # the first connection dies after one answer
    assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"hello"
    assert body(pool.request("GET", server.url + "/b", {}, 5)) == b"hello"
    assert server.connections == 2


def test_connections_numbered_above_select_s_limit_are_reused(pool: ConnectionPool) -> None:
    """The FUSE daemon holds many descriptors: a pooled socket may be numbered above 1023."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the descriptor limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        server = ScriptedServer([OK, OK])
        for _ in range(2):
            assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"hello"
        assert server.connections == 1
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_request_dropped_on_a_kept_alive_connection_is_sent_again(pool: ConnectionPool) -> None:
    server = ScriptedServer([OK, DROP], [OK])  # as a server closing an idle connection just then
    assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"hello"
    assert body(pool.request("GET", server.url + "/b", {}, 5)) == b"hello"
    assert server.connections == 2 and len(server.requests) == 3


def test_a_body_longer_than_its_content_length_does_not_spoil_the_next_request(pool: ConnectionPool) -> None:
    server = ScriptedServer([OK + b" and more", OK], [OK, OK])  # what follows the body is not the next answer
    for _ in range(3):
        assert body(pool.request("GET", server.url + "/a", {}, 5)) == b"hello"
    assert server.connections == 2


def test_a_new_connection_dropped_is_a_short_transfer(pool: ConnectionPool) -> None:
    server = ScriptedServer([DROP])
    with pytest.raises(HttpFailure) as failure:
        pool.request("GET", server.url + "/a", {}, 5)
    assert failure.value.kind == "short" and server.connections == 1


def test_redirect_comes_back_with_its_location(pool: ConnectionPool) -> None:
    server = ScriptedServer([b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"])
    response = pool.request("GET", server.url + "/a", {}, 5)
    assert response.status == 302 and response.headers["Location"] == "/elsewhere"
    assert "LOCATION" in response.headers and response.headers.get("x-none") is None


def test_a_put_says_it_has_no_body(pool: ConnectionPool) -> None:
    server = ScriptedServer([OK])
    body(pool.request("PUT", server.url + "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, 5))
    assert server.requests[0].startswith(b"PUT /latest/api/token HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 0\r\n" in server.requests[0]


def test_through_a_proxy_the_target_is_the_absolute_url(pool: ConnectionPool) -> None:
    proxy = ScriptedServer([OK])
    response = pool.request("GET", "http://stratum.example:8000/cvmfs/x/.cvmfspublished", {}, 5, proxy.url)
    assert body(response) == b"hello"
    assert proxy.requests[0].startswith(
        b"GET http://stratum.example:8000/cvmfs/x/.cvmfspublished HTTP/1.1\r\nHost: stratum.example:8000\r\n")


def test_body_cut_short_is_a_short_transfer(pool: ConnectionPool) -> None:
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", CLOSE])
    response = pool.request("GET", server.url + "/a", {}, 5)
    with pytest.raises(HttpFailure) as failure:
        body(response)
    assert failure.value.kind == "short"


@pytest.mark.parametrize("size_line", [b"zz", b"-5"])
def test_a_malformed_chunk_is_a_short_transfer(pool: ConnectionPool, size_line: bytes) -> None:
    server = ScriptedServer([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\nabcde\r\n"])
    response = pool.request("GET", server.url + "/a", {}, 5)
    with pytest.raises(HttpFailure) as failure:
        body(response)
    assert failure.value.kind == "short"


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.2\r\n\r\n", b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx"])
def test_garbage_is_a_short_transfer(pool: ConnectionPool, answer: bytes) -> None:
    server = ScriptedServer([answer])
    with pytest.raises(HttpFailure) as failure:
        pool.request("GET", server.url + "/a", {}, 5)
    assert failure.value.kind == "short"


def test_no_answer_is_slow_and_a_closed_port_is_a_connection_failure(pool: ConnectionPool) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog) but never answers
    with pytest.raises(HttpFailure) as failure:
        pool.request("GET", f"http://127.0.0.1:{silent.getsockname()[1]}/a", {}, 0.3)
    assert failure.value.kind == "slow"
    port = silent.getsockname()[1]
    silent.close()
    with pytest.raises(HttpFailure) as failure:
        pool.request("GET", f"http://127.0.0.1:{port}/a", {}, 1)
    assert failure.value.kind == "connection"


def test_only_plain_http(pool: ConnectionPool) -> None:
    with pytest.raises(ValueError):
        pool.request("GET", "https://127.0.0.1/a", {}, 1)
