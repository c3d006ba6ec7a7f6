"""The open connections of a threaded server: bounded in number, each given a deadline for its request.

A client sending its request slowly (slowloris) or idle connections cannot hold threads and
descriptors for ever: a connection must deliver each request head within ``idle_timeout`` seconds
of its opening or of the previous answer, else it is closed. At most ``limit`` connections are
open (default: what the descriptor limit allows, at most 512); at the limit a new one closes the
connection idle longest, or waits in the kernel's backlog while every connection is being answered.
An ``accept()`` failing for want of descriptors frees one the same way instead of being retried in
a busy loop.
"""

from __future__ import annotations

import errno
import math
import resource
import socket
import threading
import time
from typing import Any

IDLE_TIMEOUT = 30.0  # seconds a connection may take to send a whole request head, or stay idle
MAX_CONNECTIONS = 512  # one thread each; Apache's MaxRequestWorkers is of this order
FDS_RESERVED = 64  # descriptors kept for listeners, logs and the like
REAP_INTERVAL = 0.25


class ConnectionSlots:
    """Open connections -> when each one's next request head is due (inf while it is answered).

    The accepting thread admits, handler threads mark their state, the serving loop reaps.
    """

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT, limit: int | None = None) -> None:
        self.idle_timeout = idle_timeout
        self.limit = limit or _connection_limit()
        self.closing = threading.Event()  # set while the server stops: refuse, and end waits
        self._changed = threading.Condition()
        self._due: dict[socket.socket, float] = {}
        self._cut: set[socket.socket] = set()  # closed here, their threads not yet done
        self._next_reap = 0.0

    def admit(self, connection: socket.socket) -> bool:
        """Take a new connection unless stopping; at the limit, first close the one idle longest,
        or wait until a connection ends."""
        with self._changed:
            while len(self._due) >= self.limit and not self.closing.is_set():
                self._close_idlest()
                self._changed.wait(REAP_INTERVAL)
                self._reap_locked()
            if self.closing.is_set():
                return False
            self._due[connection] = time.monotonic() + self.idle_timeout
            return True

    def release(self, connection: socket.socket) -> None:
        with self._changed:
            self._cut.discard(connection)
            if self._due.pop(connection, None) is not None:
                self._changed.notify()

    def awaiting_request(self, connection: socket.socket) -> None:
        with self._changed:
            self._due[connection] = time.monotonic() + self.idle_timeout

    def answering(self, connection: socket.socket) -> None:
        with self._changed:
            self._due[connection] = math.inf

    def was_cut(self, connection: socket.socket) -> bool:
        """Whether this connection was closed for being late or idle: a request head read from it
        may have ended there, not where the client ended it."""
        with self._changed:
            return connection in self._cut

    def reap(self) -> None:
        """Close the connections whose request is overdue (called often: cheap when none is)."""
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + REAP_INTERVAL
            with self._changed:
                self._reap_locked()

    def close_all(self) -> None:
        """Stopping: refuse new connections and cut every open one (clients see the server go)."""
        with self._changed:
            self.closing.set()
            for connection in self._due:
                shutdown(connection)
            self._changed.notify_all()

    def out_of_descriptors(self) -> None:
        """accept() failed for want of descriptors: free one rather than retry at once, forever."""
        with self._changed:
            self._close_idlest()
            self._changed.wait(REAP_INTERVAL)

    def _reap_locked(self) -> None:
        now = time.monotonic()
        for connection, due in self._due.items():
            if due < now:
                self._cut_locked(connection)  # its thread sees the end of the stream and finishes

    def _close_idlest(self) -> None:
        """Close the connection that has waited longest for a request, if any is waiting."""
        waiting = [(due, connection) for connection, due in self._due.items() if due != math.inf]
        if waiting:
            self._cut_locked(min(waiting, key=lambda pair: pair[0])[1])

    def _cut_locked(self, connection: socket.socket) -> None:
        shutdown(connection)
        self._due[connection] = math.inf
        self._cut.add(connection)


class SlotsMixIn:
    """For a socketserver TCP server with a ``slots`` attribute: its connections go through them."""

    slots: ConnectionSlots

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.slots.admit(request)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)  # type: ignore[misc]
        finally:
            self.slots.release(request)

    def service_actions(self) -> None:
        self.slots.reap()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()  # type: ignore[misc]
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                self.slots.out_of_descriptors()
            raise


def _connection_limit() -> int:
    """Connections the descriptor limit allows: each holds a socket and, while answered, a file."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (soft - FDS_RESERVED) // 2))


def shutdown(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone
