"""Counting what a Postgres client waits for, on the wire.

Every round trip a client waits for ends with the server's ReadyForQuery message (``Z``):
the answer to a simple query and to each Sync of the extended protocol, which psycopg
sends after each statement, or once for a pipeline of them. :class:`ReadyCounter` is a
tap for :class:`chaos.proxy.FaultProxy` that reads the server's messages and counts those,
apart from the one that ends a connection's start-up: a pool opens connections in the
background, when it likes, and those are counted apart.
Connections must not ask for TLS or GSS encryption (``sslmode=disable``,
``gssencmode=disable``): the proxy would see encrypted bytes.
"""

from __future__ import annotations

import threading

#: The options a DSN through the proxy needs (see the module's docstring).
PLAIN = "sslmode=disable gssencmode=disable"


class ReadyCounter:
    """Counts ReadyForQuery messages from the server, over every proxied connection.

    :ivar count: round trips on connections already started.
    :ivar connections: connections that finished their start-up.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._unread: dict[int, bytes] = {}
        self._started: set[int] = set()
        self.count = 0
        self.connections = 0

    def __call__(self, connection: int, to_server: bool, data: bytes) -> None:
        if to_server:
            return
        with self._lock:
            buffer = self._unread.get(connection, b"") + data
            # A server message: one type byte, then its length (itself included).
            while len(buffer) >= 5:
                length = int.from_bytes(buffer[1:5], "big")
                if len(buffer) < 1 + length:
                    break
                if buffer[:1] != b"Z":
                    pass
                elif connection in self._started:
                    self.count += 1
                else:
                    self._started.add(connection)
                    self.connections += 1
                buffer = buffer[1 + length :]
            self._unread[connection] = buffer

    def reset(self) -> int:
        """The round trips counted so far, and start again from zero."""
        with self._lock:
            count, self.count = self.count, 0
        return count
