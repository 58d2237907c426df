"""Our fault-injecting proxy, in a process with many descriptors open."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from chaos.proxy import FaultProxy


def test_the_proxy_carries_bytes_when_descriptors_number_over_1024() -> None:
    """A long test run holds over 1,024 descriptors; select() refuses such numbers, and
    the proxy's pumps died on them (its clients saw their connections reset)."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    server = socket.create_server(("127.0.0.1", 0))
    proxy = FaultProxy(server.getsockname()[1])

    def echo() -> None:
        conn, _ = server.accept()
        # Closing the proxy resets the connections it holds: the end of this echo.
        with conn, contextlib.suppress(ConnectionResetError):
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            assert client.fileno() > 1024
            client.sendall(b"hello through the proxy")
            assert client.recv(100) == b"hello through the proxy"
    finally:
        proxy.close()
        thread.join(timeout=5)
        server.close()
        for fd in held:
            with contextlib.suppress(OSError):
                os.close(fd)
