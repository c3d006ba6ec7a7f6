"""The CernVM Online stand-in's access log, over real sockets: its format, and a log it cannot write."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PROJECT
from ucernvm.server.online import Context, OnlineServer, OnlineService


@pytest.fixture
def logged():
    with OnlineServer(OnlineService([Context("demo", b"hello")]), access_log=True) as server:
        yield server


def request(server: OnlineServer, method: str, path: str, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_one_combined_format_line_per_answer(logged, capfd):
    status, body = request(logged, "POST", "/api/v1/clusters", {"User-Agent": "curl/8.0"})
    assert status == 201
    request(logged, "GET", "/vm/api/context?uuid=x")
    lines = sorted(capfd.readouterr().err.splitlines(), key=lambda line: "GET" in line)
    assert len(lines) == 2
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        rf'"POST /api/v1/clusters HTTP/1\.1" 201 {len(body)} "-" "curl/8\.0"', lines[0])
    assert '"GET /vm/api/context?uuid=x HTTP/1.1" 400 18 "-" "-"' in lines[1]


def test_what_the_client_sent_is_escaped(logged, capfd):
    request(logged, "GET", "/vm/pair/x", {"User-Agent": 'a" 200 1 "\x1b[2J'})
    (line,) = capfd.readouterr().err.splitlines()
    assert line.endswith(r'"GET /vm/pair/x HTTP/1.1" 404 15 "-" "a\" 200 1 \"\x1b[2J"')


def test_a_log_that_cannot_be_written_does_not_lose_answers(tmp_path: Path):
    """stderr on a full disk: each request is still answered (a cluster made is reported made)."""
    (tmp_path / "repos").mkdir()
    (tmp_path / "online.json").write_text(json.dumps({"contexts": []}))
    with open("/dev/full", "w") as full:
        process = subprocess.Popen(
            [sys.executable, "-m", "ucernvm", "serve", str(tmp_path / "repos"), "--port", "0", "--access-log",
             "--online", str(tmp_path / "online.json"), "--online-port", "0"],
            stdout=subprocess.PIPE, stderr=full, text=True, cwd=PROJECT)
    try:
        assert process.stdout is not None
        process.stdout.readline()
        port = int(process.stdout.readline().split()[-1].rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(2):
            connection.request("POST", "/api/v1/clusters")
            response = connection.getresponse()
            assert response.status == 201 and b'"pin"' in response.read()
        connection.close()
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
