"""Transaction and branch identifiers.

A ``txid`` is a UUIDv7 in lowercase hex (32 characters): time-ordered, so its age is known
from the id alone, which is how recovery tells a young in-doubt branch (maybe still being
committed) from an abandoned one. A branch is ``(txid, participant name)``; both parts fit
the XA limits Postgres enforces (gtrid and bqual of at most 64 characters).
"""

from __future__ import annotations

import os
import re
import time

from coordinator.errors import UsageError

XA_MAX_ID_LENGTH = 64
_TXID = re.compile(r"[0-9a-f]{12}7[0-9a-f]{3}[89ab][0-9a-f]{15}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def new_txid(now: float | None = None) -> str:
    """Return a fresh UUIDv7 as 32 lowercase hex characters.

    :param now: the Unix time to embed (seconds); the current time when omitted.
    """
    millis = int((time.time() if now is None else now) * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68 & 0xFFF
    rand_b = rand & ((1 << 62) - 1)
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return f"{value:032x}"


def txid_time(txid: str) -> float:
    """Return the Unix time (seconds) at which ``txid`` was created."""
    return int(txid[:12], 16) / 1000.0


def check_txid(txid: object) -> str:
    """Return ``txid`` if it is a Lockstep transaction id, else raise :class:`UsageError`."""
    if not isinstance(txid, str):
        raise UsageError(f"txid must be a str, got {type(txid).__name__}")
    if len(txid) > XA_MAX_ID_LENGTH:
        raise UsageError(
            f"txid is {len(txid)} characters; the XA limit is {XA_MAX_ID_LENGTH} "
            "(expected a UUIDv7 as 32 lowercase hex characters)"
        )
    if not _TXID.fullmatch(txid):
        raise UsageError(f"txid {txid!r} is not a UUIDv7 in 32 lowercase hex characters")
    return txid


def check_participant_name(name: object) -> str:
    """Return ``name`` if it can name a participant (an XA branch qualifier), else raise.

    Names are 1 to 64 characters of letters, digits and ``_ . : -``, starting with a letter
    or digit, because they end up in Postgres gids, Redis keys and vector payloads.
    """
    if not isinstance(name, str):
        raise UsageError(f"participant name must be a str, got {type(name).__name__}")
    if len(name) > XA_MAX_ID_LENGTH:
        raise UsageError(
            f"participant name {name[:20]!r}... is {len(name)} characters; "
            f"the XA branch limit is {XA_MAX_ID_LENGTH}"
        )
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"participant name {name!r} must be letters, digits and '_.:-', "
            "starting with a letter or digit"
        )
    return name
