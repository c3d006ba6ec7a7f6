"""The CernVM Online stand-in's connections over real sockets: slow and idle clients cannot lock others out."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import PROJECT, closed_by_server, serves_past_idle_connections
from ucernvm.server.online import Context, OnlineServer, OnlineService


def make_cluster(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/api/v1/clusters")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_client_sending_its_request_slowly_is_cut_off_and_its_request_not_acted_on():
    """Slowloris on the PIN endpoint: the connection is closed at its deadline, others are served
    meanwhile, and the head cut short is not taken for a request (the PIN stays unclaimed)."""
    context = Context("demo", b"hello")
    service = OnlineService([context])
    pin = service.new_pin(context.uuid)
    with OnlineServer(service, idle_timeout=1.0) as server:
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        slow.sendall(f"GET /api/context?uuid=vm&ver=1&checksum=x&pin={pin} HTTP/1.1\r\n".encode())
        started = time.monotonic()
        try:
            while time.monotonic() - started < 8:
                time.sleep(0.2)
                slow.sendall(b"X-Slow: 1\r\n")
                assert make_cluster(server.port) == 201
        except OSError:
            pass  # the server has closed it
        assert closed_by_server(slow, within=1)
        assert time.monotonic() - started < 6  # its deadline was 1 s: not the trickle's 8 s
        slow.close()
    assert service.pin_status(pin) == "unclaimed"


def test_idle_connections_beyond_the_descriptor_limit_do_not_lock_out_clients(tmp_path: Path):
    """Hundreds of idle connections with few descriptors: a client is served at once, and the server
    does not spin on a failing accept()."""
    script = ("import resource, time\n"
              "resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))\n"
              "from ucernvm.server.online import OnlineServer, OnlineService\n"
              "with OnlineServer(OnlineService()) as server:\n"
              "    print(server.port, flush=True)\n"
              "    time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    assert serves_past_idle_connections(process, port, lambda: make_cluster(port) == 201)
