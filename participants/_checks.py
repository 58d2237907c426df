"""Checks every fact-storing participant makes at prepare, with their error messages."""

from __future__ import annotations

import json
from collections.abc import Sequence

from coordinator.errors import ConfigurationError, TransactionAborted, UsageError, VersionConflict
from coordinator.records import (
    CLAIM_SEPARATOR,
    DeleteFact,
    Execute,
    TransactionMeta,
    UpsertFact,
    Write,
)

FactWrite = UpsertFact | DeleteFact
MAX_PAYLOAD_BYTES = 1 << 20
"""A fact's payload, as JSON, may not exceed this (memories are not blobs)."""


def fact_writes(participant: str, writes: Sequence[Write]) -> list[FactWrite]:
    """The fact writes among ``writes``; ``Execute`` is refused by stores without SQL.

    :raises VersionConflict: two facts of the transaction take the same claim.
    """
    out: list[FactWrite] = []
    claims: dict[str, str] = {}
    for i, write in enumerate(writes):
        if isinstance(write, TransactionMeta):
            continue
        if isinstance(write, Execute):
            raise UsageError(
                f"participant {participant!r} cannot run SQL (writes[{i}] is an Execute); "
                "send SQL to a SQL participant",
                participant=participant,
            )
        if isinstance(write, UpsertFact):
            try:
                size = len(json.dumps(write.fact.payload))
            except (TypeError, ValueError) as exc:
                raise UsageError(
                    f"writes[{i}]: fact {write.fact.id!r} payload is not JSON-serialisable: {exc}",
                    participant=participant,
                ) from exc
            if size > MAX_PAYLOAD_BYTES:
                raise UsageError(
                    f"writes[{i}]: fact {write.fact.id!r} payload is {size} bytes of JSON; the "
                    f"limit is {MAX_PAYLOAD_BYTES}",
                    participant=participant,
                )
            if write.fact.version <= write.expected_version:
                raise UsageError(
                    f"writes[{i}]: fact {write.fact.id!r} has version {write.fact.version} but "
                    f"replaces version {write.expected_version}; a new version must be higher",
                    participant=participant,
                )
            if write.claim is not None:
                holder = claims.setdefault(write.claim, write.fact.id)
                if holder != write.fact.id:
                    raise claim_conflict(participant, None, write.claim, holder)
        elif not isinstance(write, DeleteFact):
            raise UsageError(f"writes[{i}] is not a write: {write!r}", participant=participant)
        out.append(write)
    return out


def facts_and_sql(
    participant: str, writes: Sequence[Write]
) -> tuple[list[FactWrite], list[Execute]]:
    """For a SQL participant: :func:`fact_writes` of ``writes``, and the caller's own
    ``Execute`` statements among them, in order."""
    statements = [w for w in writes if isinstance(w, Execute)]
    return fact_writes(participant, [w for w in writes if not isinstance(w, Execute)]), statements


def statement_failed(i: int, statements: Sequence[Execute]) -> str:
    """How an error names the caller's statement ``i`` of ``statements``."""
    return f"your SQL failed (statement {i + 1} of {len(statements)}: {statements[i].sql!r})"


def transaction_meta(writes: Sequence[Write]) -> TransactionMeta:
    """The transaction's metadata (a default one when the writes carry none)."""
    metas = [w for w in writes if isinstance(w, TransactionMeta)]
    return metas[-1] if metas else TransactionMeta()


def claim_conflict(participant: str, txid: str | None, claim: str, holder: str) -> VersionConflict:
    key = claim.split(CLAIM_SEPARATOR)
    shown = f"{key[1]}={key[2]} of type {key[0]!r}" if len(key) == 3 else repr(claim)
    return VersionConflict(
        f"{shown} already belongs to fact {holder!r} (a singleton key is unique)",
        txid=txid,
        participant=participant,
    )


def version_conflict(
    participant: str, txid: str, fact_id: str, expected: int, actual: int
) -> VersionConflict:
    state = "does not exist" if actual == 0 else f"is at version {actual}"
    return VersionConflict(
        f"fact {fact_id!r} {state}; the write expected version {expected}",
        txid=txid,
        participant=participant,
    )


def history_conflict(participant: str, txid: str, fact_id: str, version: int) -> VersionConflict:
    """A re-creation numbered before the fact was re-created (and deleted) again: its
    version is taken, and history is never rewritten."""
    return VersionConflict(
        f"version {version} of fact {fact_id!r} is already in its history: the fact was "
        "re-created since this write was numbered",
        txid=txid,
        participant=participant,
    )


def locked_conflict(participant: str, txid: str, fact_id: str) -> VersionConflict:
    return VersionConflict(
        f"fact {fact_id!r} is staged by another transaction that has not finished",
        txid=txid,
        participant=participant,
    )


def already_aborted(participant: str, txid: str) -> TransactionAborted:
    return TransactionAborted(
        "this transaction was already aborted here; a late prepare is refused",
        txid=txid,
        participant=participant,
    )


def storage_options(scheme: str, options: dict[str, object]) -> None:
    """Refuse options a storage's URL factory does not take (``embedder`` is for indexes)."""
    options.pop("embedder", None)  # an index option: a storage embeds nothing
    if options:
        raise ConfigurationError(f"{scheme}:// takes no options {sorted(options)}")


def seconds_option(where: str, key: str, value: str) -> float:
    """A URL query's ``key=value`` as a number of seconds > 0 (``where``: whose URL).

    :raises ConfigurationError: it is not one.
    """
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(
            f"{key} in the {where} URL must be a number of seconds > 0, got {value!r}"
        )
    return seconds
