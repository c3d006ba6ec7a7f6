"""Requests per second for small objects over one keep-alive connection: stratum server vs http.server.

Usage: python benchmarks/bench_server.py [--seconds 3] [--objects 2000]

Each server runs in its own process on 127.0.0.1 and serves the same generated repository
(objects of 512 B .. 4 KiB under data/XX/); one client connection fetches them in a loop and
checks every body's length. Baselines: ``python3 -m http.server`` as shipped (HTTP/1.0, one
connection per request) and with ``--protocol HTTP/1.1`` (keep-alive).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = "bench.cern.ch"
SERVE = ("import sys; from ucernvm.server import StratumServer\n"
         "with StratumServer(sys.argv[1]) as s:\n"
         "    print(s.url, flush=True); sys.stdin.read()\n")


def make_repository(root: Path, count: int) -> list[tuple[str, int]]:
    rng = random.Random(42)
    objects = []
    for _ in range(count):
        name = "%040x" % rng.getrandbits(160)
        size = rng.randint(512, 4096)
        path = root / REPO / "data" / name[:2] / name[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        objects.append((f"{REPO}/data/{name[:2]}/{name[2:]}", size))
    return objects


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not come up")


def measure(base: str, objects: list[tuple[str, int]], seconds: float) -> float:
    """Requests/s fetching ``base/<object path>`` sequentially on one connection."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    done = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for path, size in objects[done % len(objects):][:200]:
            connection.request("GET", f"{parts.path}/{path}")
            response = connection.getresponse()
            if response.status != 200 or len(response.read()) != size:
                raise SystemExit(f"{base}{path}: bad response {response.status}")
            done += 1
    elapsed = time.perf_counter() - start
    connection.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--objects", type=int, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        objects = make_repository(root, args.objects)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        results = {}

        ours = subprocess.Popen([sys.executable, "-c", SERVE, str(root)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            url = ours.stdout.readline().strip()
            results["ucernvm stratum (keep-alive)"] = measure(f"{url}/cvmfs", objects, args.seconds)
        finally:
            ours.stdin.close()
            ours.wait()

        for label, extra in (("http.server HTTP/1.0 (default)", []),
                             ("http.server --protocol HTTP/1.1", ["--protocol", "HTTP/1.1"])):
            port = free_port()
            baseline = subprocess.Popen(
                [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", tmp, *extra, str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_listening(port)
                results[label] = measure(f"http://127.0.0.1:{port}", objects, args.seconds)
            finally:
                baseline.terminate()
                baseline.wait()

    ours_rate = results["ucernvm stratum (keep-alive)"]
    print(f"{args.objects} objects of 512 B..4 KiB, one client connection, {args.seconds:g} s each")
    for label, rate in results.items():
        print(f"  {label:34s} {rate:8.0f} req/s   ucernvm/this = {ours_rate / rate:5.2f}")


if __name__ == "__main__":
    main()
