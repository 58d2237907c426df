"""The Redis participant (source of the generated sync twin).

Theory of operation: ``prepare`` is one Lua script — it checks every fact's version, lock
and singleton claim and, only if all pass, writes the stage (the writes, as JSON) and the
lock keys and adds the txid to the prepared set, atomically. ``commit`` is one Lua script
that applies the stage and deletes it (a missing stage: already committed). ``abort``
deletes the stage and the locks and records the txid as aborted, which refuses a late
prepare. Durability of each step is Redis's: run it with ``appendonly yes`` and
``appendfsync always`` (checked at start-up, with a warning).

Alone in a transaction, the storage commits in one phase: one script checks and applies.
With its own decision log (the default: a :class:`~participants.redis.RedisDecisionLog`
under the same prefix) it is the last resource: once the indexes have prepared, one
script checks, applies and records the COMMIT decision, where two phases took a prepare,
a decision and a commit, each written to disk before Redis replied.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from coordinator.abc import AsyncDecisionLog, TransactionEntry, UndoReads, Vote
from coordinator.errors import ParticipantError, TransactionAborted, TransactionInDoubt
from coordinator.filters import check_filters, matches
from coordinator.ids import check_participant_name
from coordinator.plugins import scheme_of
from coordinator.records import DeleteFact, FactRecord, JSONValue, UpsertFact, Write
from participants._checks import (
    already_aborted,
    claim_conflict,
    fact_writes,
    history_conflict,
    locked_conflict,
    transaction_meta,
    version_conflict,
)
from participants.redis import _scripts
from participants.redis._clients import (
    AsyncRedis,
    AsyncRetry,
    NoBackoff,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
)
from participants.redis._log import (
    AsyncRedisDecisionLog,
    RedisDecisionLog,
    decision_json,
    records_key,
    server_of,
    unended_key,
    where,
)

logger = logging.getLogger("participants.redis")


class AsyncRedisStorage:
    """Facts in Redis (JSON strings, type and session index sets), staged by Lua scripts.

    :param url: ``redis://host:port/db``.
    :param name: the participant name (keep it stable).
    :param prefix: key prefix, so several stores can share one Redis.
    :param timeout: seconds for connecting and for every command; no silent retries.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "redis",
        prefix: str = "lockstep:",
        timeout: float = 5.0,
    ) -> None:
        self._name = check_participant_name(name)
        self._url, self._prefix, self._timeout = url, prefix, timeout
        # redis-py retries for seconds by default; a participant must fail fast and let
        # the coordinator decide.
        self._client = AsyncRedis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        self._prepare_script = self._client.register_script(_scripts.PREPARE)
        self._commit_script = self._client.register_script(_scripts.COMMIT)
        self._one_phase_script = self._client.register_script(_scripts.ONE_PHASE)
        self._abort_script = self._client.register_script(_scripts.ABORT)
        self._undoable_script = self._client.register_script(_scripts.UNDOABLE)
        self._head_script = self._client.register_script(_scripts.HEAD)
        self._undo_reads_script = self._client.register_script(_scripts.UNDO_READS)
        self._checked = False

    @property
    def name(self) -> str:
        return self._name

    def default_decision_log(self) -> AsyncDecisionLog:
        """A :class:`~participants.redis.RedisDecisionLog` on this Redis, under this
        storage's prefix: the decisions are as durable as the facts, and every process
        using these facts (and their recovery) reads the same ones."""
        return AsyncRedisDecisionLog(self._url, prefix=self._prefix, timeout=self._timeout)

    def holds_decision_log(self, log: object) -> bool:
        """True when ``log`` keeps its records on this Redis under this storage's prefix."""
        inner = getattr(log, "sync", log)  # an async log wraps the synchronous one
        return (
            isinstance(inner, RedisDecisionLog)
            and inner.prefix == self._prefix
            and server_of(inner.url) == server_of(self._url)
        )

    async def decision_log_for(self, url: str) -> str | None:
        """The log URL to recover this store with, when this Redis holds decisions of its
        own and ``url`` names another log; ``None`` when ``url`` will do."""
        if scheme_of(url) == "redis" and where(url)[1] == self._prefix:
            theirs = server_of(url)
            if theirs is not None and theirs == server_of(self._url):
                return None
        if not await self._client.exists(records_key(self._prefix)):
            return None
        return f"{self._url}?prefix={self._prefix}"

    # -- the participant contract -------------------------------------------------------

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        facts, checks = _arguments(self._name, writes)
        await self._check_durability()
        reply = await self._run(
            "prepare", txid, self._prepare_script, [self._prefix, txid, *checks]
        )
        self._vote(txid, facts, reply)
        return Vote.YES

    async def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None:
        """Check and apply ``writes`` in one script: all of them, or none and a refusal."""
        await self._commit_at_once(txid, writes, None)

    async def commit_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> None:
        """The last-resource commit: these writes and the COMMIT decision (naming
        ``participants``) in this storage's own decision log, one script. It refuses,
        writing nothing, when recovery recorded an ABORT for the txid first."""
        await self._commit_at_once(txid, writes, participants)

    async def _commit_at_once(
        self, txid: str, writes: Sequence[Write], decision_for: Sequence[str] | None
    ) -> None:
        facts, checks = _arguments(self._name, writes)
        now = time.time()
        decision = "" if decision_for is None else decision_json("commit", decision_for, now)
        keys = (
            [] if decision_for is None else [records_key(self._prefix), unended_key(self._prefix)]
        )
        await self._check_durability()
        try:
            reply = await self._one_phase_script(
                keys=keys, args=[self._prefix, txid, now, decision, *checks]
            )
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # Sent or not, run or not: the reply is lost. With the decision, recovery
            # reads it back; without, the caller must look.
            raise TransactionInDoubt(
                f"the connection to Redis failed during a one-phase commit: {exc}",
                txid=txid,
                participant=self._name,
            ) from exc
        except RedisError as exc:
            # An answer, and an error: refused before it ran (out of memory, a read-only
            # replica...), so nothing is written and no decision either.
            raise ParticipantError(
                f"Redis commit failed: {exc}", txid=txid, participant=self._name
            ) from exc
        if reply == ["DECIDED"]:
            raise TransactionAborted(
                "recovery aborted this transaction before its COMMIT was recorded",
                txid=txid,
                participant=self._name,
            )
        self._vote(txid, facts, reply)

    def _vote(self, txid: str, facts: Sequence[UpsertFact | DeleteFact], reply: Any) -> None:
        """Return on ``YES``; raise the refusal a prepare's checks gave."""
        match reply:
            case ["YES"]:
                return
            case ["ABORTED"]:
                raise already_aborted(self._name, txid)
            case ["LOCKED", fact_id]:
                raise locked_conflict(self._name, txid, fact_id)
            case ["HISTORY", fact_id, version]:
                raise history_conflict(self._name, txid, fact_id, int(version))
            case ["VERSION", fact_id, actual]:
                expected = next(w.expected_version for w in facts if w.fact_id == fact_id)
                raise version_conflict(self._name, txid, fact_id, expected, int(actual))
            case ["CLAIM", claim, owner]:
                raise claim_conflict(self._name, txid, claim, owner)
        raise ParticipantError(
            f"unexpected reply from Redis: {reply!r}", txid=txid, participant=self._name
        )

    async def commit(self, txid: str) -> None:
        await self._run("commit", txid, self._commit_script, [self._prefix, txid, time.time()])

    async def abort(self, txid: str) -> None:
        await self._run("abort", txid, self._abort_script, [self._prefix, txid, time.time()])

    async def recover(self) -> list[str]:
        members = await self._call("recover", self._client.smembers, self._key("prepared"))
        return sorted(members)

    # -- reads (committed data only) ----------------------------------------------------

    async def get(self, fact_id: str) -> FactRecord | None:
        raw = await self._call("get", self._client.get, self._key("fact:" + fact_id))
        return None if raw is None else FactRecord.from_json(raw)

    async def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        raw, newest = await self._call("get", self._head_script, [], [self._prefix, fact_id])
        if raw is not None:
            fact = FactRecord.from_json(raw)
            return fact, fact.version
        return None, int(newest)

    async def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]:
        if not fact_ids:
            return {}
        keys = [self._key("fact:" + i) for i in fact_ids]
        raws = await self._call("get", self._client.mget, keys)
        facts = [FactRecord.from_json(raw) for raw in raws if raw is not None]
        return {f.id: f for f in facts}

    async def query(
        self,
        typename: str | None,
        filters: Mapping[str, JSONValue],
        session_id: str | None,
    ) -> list[FactRecord]:
        checked = check_filters(filters)
        sets = [self._key("facts")]
        if typename is not None:
            sets.append(self._key("type:" + typename))
        if session_id is not None:
            sets.append(self._key("session:" + session_id))
        ids = await self._call("query", self._client.sinter, sets)
        facts = await self.get_many(sorted(ids))
        return sorted(
            (f for f in facts.values() if matches(f, checked)), key=lambda f: (f.ts, f.id)
        )

    async def history(self, fact_id: str) -> list[FactRecord]:
        versions = await self._call(
            "history", self._client.hgetall, self._key("history:" + fact_id)
        )
        return sorted((FactRecord.from_json(v) for v in versions.values()), key=lambda f: f.version)

    async def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        found: list[FactRecord] = []
        for fact_id, version in keys:
            raw = await self._call(
                "read", self._client.hget, self._key("history:" + fact_id), str(version)
            )
            if raw is not None:
                found.append(FactRecord.from_json(raw))
        return found

    async def written_by(self, txids: Sequence[str]) -> list[FactRecord]:
        found: list[FactRecord] = []
        for txid in txids:
            written = await self._call(
                "read", self._client.hget, self._key("tx:" + txid), "written"
            )
            for item in (written or "").split("\x1e"):
                if item:
                    fact_id, version = item.split("\x1f")
                    raw = await self._call(
                        "read", self._client.hget, self._key("history:" + fact_id), version
                    )
                    if raw is not None:
                        found.append(FactRecord.from_json(raw))
        return found

    async def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        order, before, records, newest = await self._call(
            "read", self._undo_reads_script, [], [self._prefix, *txids]
        )
        heads: dict[str, tuple[FactRecord | None, int]] = {}
        previous: dict[str, FactRecord] = {}
        for fact_id, raw_before, raw, top in zip(order, before, records, newest, strict=True):
            if raw_before is not None:
                previous[fact_id] = FactRecord.from_json(raw_before)
            fact = None if raw is None else FactRecord.from_json(raw)
            heads[fact_id] = fact, (fact.version if fact is not None else int(top))
        return UndoReads(previous, heads)

    async def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]:
        if limit <= 0:
            return []
        args: list[Any] = [self._prefix, limit]
        if session_id is not None:
            args.append(session_id)
        rows = await self._call("read", self._undoable_script, [], args)
        return [_entry(txid, dict(zip(flat[::2], flat[1::2], strict=True))) for txid, flat in rows]

    async def all_facts(self) -> list[FactRecord]:
        ids = await self._call("read", self._client.smembers, self._key("facts"))
        facts = await self.get_many(sorted(ids))
        return [facts[i] for i in sorted(facts)]

    async def close(self) -> None:
        await self._client.aclose()

    # -- internals ----------------------------------------------------------------------

    def _key(self, suffix: str) -> str:
        return self._prefix + suffix

    async def _check_durability(self) -> None:
        if self._checked:
            return
        try:
            aof = await self._client.config_get("appendonly")
            fsync = await self._client.config_get("appendfsync")
        except RedisError:
            aof, fsync = {}, {}  # CONFIG may be disabled on managed servers
        if aof.get("appendonly") != "yes" or fsync.get("appendfsync") != "always":
            logger.warning(
                "Redis runs with appendonly=%s appendfsync=%s: a crash of Redis can lose "
                "prepared or committed writes; use appendonly yes and appendfsync always",
                aof.get("appendonly"),
                fsync.get("appendfsync"),
            )
        self._checked = True

    async def _run(self, action: str, txid: str, script: Any, args: list[Any]) -> Any:
        try:
            return await script(keys=[], args=args)
        except RedisError as exc:
            raise ParticipantError(
                f"Redis {action} failed: {exc}", txid=txid, participant=self._name
            ) from exc

    async def _call(self, action: str, method: Any, *args: Any) -> Any:
        try:
            return await method(*args)
        except RedisError as exc:
            raise ParticipantError(f"Redis {action} failed: {exc}", participant=self._name) from exc


def _arguments(
    participant: str, writes: Sequence[Write]
) -> tuple[list[UpsertFact | DeleteFact], list[Any]]:
    """The facts ``writes`` change, and what the prepare script takes after the txid: the
    stage (JSON), the number of facts, then four a fact (id, expected version, claim,
    re-created version)."""
    facts = fact_writes(participant, writes)
    meta = transaction_meta(writes)
    stage = {
        "writes": [_staged(w) for w in facts],
        "meta": {
            "session_id": meta.session_id or "",
            "kind": meta.kind,
            "undoes": list(meta.undoes),
            "actor": meta.actor or "",
            "reason": meta.reason or "",
        },
    }
    checks: list[Any] = [json.dumps(stage), len(facts)]
    for write in facts:
        claim = write.claim if isinstance(write, UpsertFact) and write.claim else ""
        # A re-creation's version, checked against history (0: nothing to check).
        recreated = (
            write.fact.version
            if isinstance(write, UpsertFact) and write.expected_version == 0
            else 0
        )
        checks += [write.fact_id, write.expected_version, claim, recreated]
    return facts, checks


def _staged(write: Any) -> dict[str, Any]:
    if isinstance(write, UpsertFact):
        fact = write.fact
        return {
            "op": "upsert",
            "id": fact.id,
            "version": fact.version,
            "type": fact.type,
            "session": fact.session_id or "",
            "record": fact.to_json(),
            "claim": write.claim or "",
        }
    stone = write.tombstone
    return {
        "op": "delete",
        "id": write.fact_id,
        "claim": "",
        "tombstone": "" if stone is None else stone.to_json(),
        "tomb_version": write.expected_version + 1 if stone is None else stone.version,
    }


def _entry(txid: str, row: Mapping[str, str]) -> TransactionEntry:
    undoes = json.loads(row.get("undoes") or "[]")
    return TransactionEntry(
        int(row.get("seq", 0)),
        txid,
        row.get("session_id") or None,
        row.get("kind", "write"),
        tuple(undoes) if isinstance(undoes, list) else (),
        row.get("rolled_back_by") or None,
        float(row.get("committed_at", 0)),
        row.get("actor") or None,
        row.get("reason") or None,
    )
