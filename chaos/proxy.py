"""A fault-injecting TCP proxy on loopback: pass, cut, black-hole, delay.

Tests and chaos runs put it between a client and a server (Postgres, Redis, Chroma) to
cut connections between the phases of a commit::

    proxy = FaultProxy(upstream_port)          # listens on 127.0.0.1:<proxy.port>
    proxy.cut()                                # reset every open connection now
    proxy.blackhole()                          # accept, but never forward a byte
    proxy.delay(0.2)                           # add latency to every chunk
    proxy.heal()                               # back to passing traffic
    proxy.close()

``tap``, if given, sees every chunk it forwards: ``tap(connection, to_server, data)``,
``connection`` counting the connections accepted from 0 (tests count protocol messages).

Only loopback addresses are used; every thread stops when the proxy is closed.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import cast

Tap = Callable[[int, bool, bytes], None]


class FaultProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<upstream_port>, with faults on demand."""

    def __init__(self, upstream_port: int, tap: Tap | None = None) -> None:
        self.upstream_port = upstream_port
        self._tap = tap
        self._accepted = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._mode = "pass"
        self._latency = 0.0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()

    # -- faults -------------------------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection (new ones still pass)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    sock.close()

    def blackhole(self) -> None:
        """Keep connections open but forward nothing, so clients hit their timeouts."""
        self._mode = "blackhole"

    def delay(self, seconds: float) -> None:
        self._latency = seconds

    def heal(self) -> None:
        self._mode = "pass"
        self._latency = 0.0

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()

    # -- plumbing -----------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            number, self._accepted = self._accepted, self._accepted + 1
            threading.Thread(
                target=self._pump, args=(client, upstream, number), daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket, number: int) -> None:
        peers = {a: b, b: a}
        # A selector, not select.select: a process with over 1,024 descriptors open (a
        # long test run) gets numbers select() refuses, and the pump died on them.
        ready = selectors.DefaultSelector()
        try:
            for sock in peers:
                ready.register(sock, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in ready.select(0.2):
                    sock = cast(socket.socket, key.fileobj)
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self._mode == "blackhole":
                        continue
                    if self._latency:
                        time.sleep(self._latency)
                    if self._tap is not None:
                        self._tap(number, sock is a, data)
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            ready.close()
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
