"""Relay one guest connection to a host service: the program QEMU runs for each isolated-guest forward.

QEMU's user network starts ``python -I -S relay.py HOST PORT`` for every TCP connection the guest opens
to a forwarded address, with that connection on standard input and output. The relay connects to
HOST:PORT and copies bytes both ways until both sides have finished. A program per connection, rather
than QEMU's ``tcp:`` character device (one host connection opened at QEMU's start and shared by every
guest connection), so that parallel fetches, closes and reconnects behave as on a real network.

Standard library only, and no package imports: it runs with ``-I -S`` (tens of milliseconds to start,
whatever the environment). socat or nc would do the same, but neither is on a minimal Debian.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys

CONNECT_TIMEOUT = 10.0
CHUNK = 65536


def relay(guest: socket.socket, host: socket.socket) -> None:
    """Copy both ways; a side's end of data is passed on as a half-close; return when both ended."""
    peers = {guest: host, host: guest}
    selector = selectors.DefaultSelector()
    for sock in peers:
        sock.setblocking(True)
        selector.register(sock, selectors.EVENT_READ)
    open_sides = 2
    while open_sides:
        for key, _ in selector.select():
            source = key.fileobj
            assert isinstance(source, socket.socket)
            try:
                data = source.recv(CHUNK)
            except ConnectionError:
                return
            if data:
                try:
                    peers[source].sendall(data)
                except (ConnectionError, BrokenPipeError):
                    return
                continue
            selector.unregister(source)
            open_sides -= 1
            try:
                peers[source].shutdown(socket.SHUT_WR)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: relay.py HOST PORT (the guest connection on stdin/stdout)", file=sys.stderr)
        return 2
    guest = socket.socket(fileno=os.dup(0))
    try:
        host = socket.create_connection((argv[1], int(argv[2])), timeout=CONNECT_TIMEOUT)
    except OSError:
        return 1  # closing the guest's connection is the refusal it sees
    host.settimeout(None)
    with guest, host:
        relay(guest, host)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
