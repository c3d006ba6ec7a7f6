"""The geo API's name lookups against a DNS server that never answers, in a network namespace of the
test's own (only its loopback; the queries go nowhere else): requests full of names must not start a
thread for every name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import PROJECT

# Runs inside the namespace: a UDP socket on 127.0.0.1:53 takes the queries and answers none, a
# stratum serves, and five requests of 99 names each arrive together.
SCRIPT = """
import json, os, socket, sys, tempfile, threading, time, http.client
from ucernvm.server import StratumServer
silent_dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
silent_dns.bind(("127.0.0.1", 53))
root = tempfile.mkdtemp()
os.mkdir(os.path.join(root, "test.cern.ch"))
answers = []

def geo(client):
    names = ",".join(f"host{client}-{i}.example.org" for i in range(99))
    connection = http.client.HTTPConnection("127.0.0.1", stratum.port, timeout=30)
    started = time.monotonic()
    connection.request("GET", f"/cvmfs/test.cern.ch/api/v1.0/geo/127.0.0.1/127.0.0.1,{names}")
    response = connection.getresponse()
    answers.append((response.status, response.read().decode().split(",")[0], time.monotonic() - started))

with StratumServer(root) as stratum:
    clients = [threading.Thread(target=geo, args=(client,)) for client in range(5)]
    for client in clients:
        client.start()
    time.sleep(1)
    lookups = sum(thread.name.startswith("resolve ") for thread in threading.enumerate())
    for client in clients:
        client.join()
print(json.dumps({"lookups": lookups, "answers": answers}))
"""

SETUP = ("ip link set lo up && printf 'nameserver 127.0.0.1\\n' > \"$0\" && mount --bind \"$0\" /etc/resolv.conf"
         " && exec \"$1\" -c \"$2\"")


def test_lookups_of_names_no_dns_server_answers_are_bounded(tmp_path):
    if subprocess.run(["unshare", "-mn", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (needs root)")
    result = subprocess.run(["unshare", "-mn", "sh", "-c", SETUP, str(tmp_path / "resolv.conf"), sys.executable,
                             SCRIPT], capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert 0 < outcome["lookups"] <= 64  # not one thread per name: 495 of them
    # Each answered within its 2 s budget, the one located server (127.0.0.1) first.
    assert [answer[:2] for answer in outcome["answers"]] == [[200, "1"]] * 5
    assert all(answer[2] < 5 for answer in outcome["answers"])
