"""A decision log in Redis, beside the facts of a Redis storage.

A Redis storage keeps its decisions here by default, so a store whose source of truth is
Redis survives a crash between the decision and the last commit: recovery reads the
decision back, wherever it runs. Deciding is one Lua script: ``HSETNX`` of the record
(the first decision for a txid wins, whichever process made it) and its txid added to the
unended set, then the winners read back. Each record's durability is Redis's: with
``appendonly yes`` and ``appendfsync always`` (the storage warns otherwise) Redis
fsyncs the script's writes before it replies.

Keys, under the storage's prefix: ``<prefix>decisions`` (a hash, txid -> the record as
JSON), ``<prefix>decisions:unended`` (a sorted set of the txids not ended, by the time of
their decision) and ``<prefix>recovery-lease`` (the recovery daemon's lease).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from coordinator.abc import Decision, DecisionRecord
from coordinator.errors import DecisionLogError
from coordinator.log import AsyncDecisionLogAdapter
from coordinator.log._base import DecisionLogBase, check_decisions
from participants.redis._clients import NoBackoff, Redis, RedisError, Retry

logger = logging.getLogger("participants.redis")

#: How long a recovery daemon's lease lasts unless the daemon checks it again (it checks
#: before every pass); a daemon that died loses it after this long.
LEASE_SECONDS = 30.0

_DECIDE = """
local now = ARGV[1]
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], now, ARGV[i])
  end
end
local won = {}
for i = 2, #ARGV, 2 do won[#won + 1] = redis.call('HGET', KEYS[1], ARGV[i]) end
return won
"""

# 1: held by this token (its time renewed), 0: another daemon holds it.
_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDecisionLog(DecisionLogBase):
    """Decide-once decision records in Redis; thread- and process-safe.

    :param url: ``redis://host:port/db``.
    :param prefix: key prefix (a Redis storage passes its own).
    :param timeout: seconds for connecting and for every command.
    """

    def __init__(self, url: str, *, prefix: str = "lockstep:", timeout: float = 5.0) -> None:
        self._client = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # fail fast: the coordinator decides what next
        )
        self.url, self.prefix = url, prefix
        self._records_key = records_key(prefix)
        self._unended_key = unended_key(prefix)
        self._lease_key = f"{prefix}recovery-lease"
        self._decide = self._client.register_script(_DECIDE)
        self._lease_script = self._client.register_script(_LEASE)
        self._release_script = self._client.register_script(_RELEASE)

    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]:
        check_decisions(decisions)
        if not decisions:
            return {}
        now = time.time()
        args: list[Any] = [now]
        for txid, decision, participants in decisions:
            args += [txid, decision_json(Decision(decision).value, participants, now)]
        won = self._call(
            "decide", self._decide, keys=[self._records_key, self._unended_key], args=args
        )
        return {
            txid: Decision(json.loads(text)["decision"])
            for (txid, _, _), text in zip(decisions, won, strict=True)
        }

    def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]:
        ids = list(txids)
        if not ids:
            return {}

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(self._records_key, ids)
            pipe.zmscore(self._unended_key, ids)
            return list(pipe.execute())

        texts, scores = self._call("read", read)
        return {
            txid: _record(txid, text, ended=score is None)
            for txid, text, score in zip(ids, texts, scores, strict=True)
            if text is not None
        }

    def unended(self) -> list[DecisionRecord]:
        ids = self._call("read", self._client.zrange, self._unended_key, 0, -1)
        return [r for r in self.records(ids).values() if not r.ended]

    def end(self, txids: Iterable[str]) -> None:
        ids = list(txids)
        if ids:
            self._call("end", self._client.zrem, self._unended_key, *ids)

    def close(self) -> None:
        self._client.close()

    @contextlib.contextmanager
    def lease(self) -> Iterator[RedisLease]:
        """The recovery daemon's lease on this log: a key holding this daemon's token for
        :data:`LEASE_SECONDS`, renewed by every check; released when the block ends."""
        lease = RedisLease(self)
        try:
            lease.check()
            yield lease
        finally:
            lease.release()

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RedisError as exc:
            raise DecisionLogError(f"Redis decision log failed to {action}: {exc}") from exc


class RedisLease:
    """One daemon's hold on ``<prefix>recovery-lease``; ``check`` renews or takes it."""

    def __init__(self, log: RedisDecisionLog) -> None:
        self._log = log
        self._token = uuid.uuid4().hex
        self.held = False

    def check(self) -> bool:
        """True while this daemon holds the lease (taking it when it is free)."""
        log = self._log
        try:
            self.held = bool(
                log._lease_script(
                    keys=[log._lease_key], args=[self._token, int(LEASE_SECONDS * 1000)]
                )
            )
        except RedisError as exc:
            logger.warning("recovery lease check failed: %s", exc)
            self.held = False
        return self.held

    def release(self) -> None:
        with contextlib.suppress(RedisError):
            self._log._release_script(keys=[self._log._lease_key], args=[self._token])
        self.held = False


def _record(txid: str, text: str, *, ended: bool) -> DecisionRecord:
    data = json.loads(text)
    return DecisionRecord(
        txid,
        Decision(data["decision"]),
        tuple(data["participants"]),
        float(data["decided_at"]),
        ended,
    )


def records_key(prefix: str) -> str:
    """The hash holding the decision records of the log under ``prefix``."""
    return f"{prefix}decisions"


def unended_key(prefix: str) -> str:
    """The sorted set of the txids decided and not ended, in the log under ``prefix``."""
    return f"{prefix}decisions:unended"


def decision_json(decision: str, participants: Sequence[str], now: float) -> str:
    """A decision record as the log stores it (the storage's last-resource commit writes
    the same)."""
    return json.dumps({"decision": decision, "participants": list(participants), "decided_at": now})


def where(url: str) -> tuple[str, str]:
    """``(server URL, prefix)`` a ``redis://host:port/db[?prefix=...]`` URL names."""
    from urllib.parse import parse_qs, urlsplit

    params = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    return url.split("?", 1)[0], params.get("prefix", "lockstep:")


def server_of(url: str) -> tuple[object, int] | None:
    """The server and database a ``redis://`` URL connects to, with the default port and
    database filled in (``redis://h`` and ``redis://h:6379/0`` are one); ``None`` for a URL
    redis-py cannot read."""
    from redis.connection import parse_url

    try:
        params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        return None
    host = str(params.get("host") or "localhost").lower()
    server = params.get("path") or (host, int(params.get("port") or 6379))
    return server, int(params.get("db") or 0)


def decision_log_from_url(url: str) -> RedisDecisionLog:
    """``redis://host:port/db[?prefix=...]`` (entry point of the ``redis`` log scheme); the
    same prefix as the storage's URL names the log that storage keeps by default."""
    server, prefix = where(url)
    return RedisDecisionLog(server, prefix=prefix)


class AsyncRedisDecisionLog(AsyncDecisionLogAdapter):
    """:class:`RedisDecisionLog` with an async face (calls run on worker threads)."""

    def __init__(self, url: str, *, prefix: str = "lockstep:", timeout: float = 5.0) -> None:
        super().__init__(RedisDecisionLog(url, prefix=prefix, timeout=timeout))
