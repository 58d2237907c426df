"""The sync twin's deadline: a socket shut down when the time is up, and never after the
block it bounds has ended (the connection may be another caller's by then)."""

from __future__ import annotations

import socket

from coordinator._acompat import Deadline, deadline


def test_a_call_waiting_on_a_silent_socket_returns_when_the_deadline_severs_it() -> None:
    ours, silent_peer = socket.socketpair()
    with ours, silent_peer, deadline(0.05, ours.fileno()) as bound:
        assert ours.recv(1) == b""  # would wait for ever: the peer never writes
    assert bound.expired


def test_a_deadline_whose_block_has_ended_severs_nothing() -> None:
    ours, peer = socket.socketpair()
    with ours, peer:
        late = Deadline(ours.fileno())
        late.end()  # the block ended just as the watchdog found the deadline due
        late.sever()
        assert not late.expired
        ours.sendall(b"still open")
        assert peer.recv(16) == b"still open"

        due = Deadline(ours.fileno())
        due.sever()
        assert due.expired
        assert peer.recv(16) == b""  # shut down: the peer sees the end
