"""Hypothesis drives the memory API; after every step the stores equal a simple model.

Storage: a SQLite file (and, in shorter runs, Redis and Postgres: each storage reads a
rollback's undo its own way). Index: Qdrant (in memory) behind a switch that makes its prepare
fail (a flaky vector store). The model is a dict of facts plus the list of transactions
(for rollback). Invariants: the storage holds exactly the model; the index holds exactly
the model's facts at their current versions (G1, G7); search returns only committed,
current versions, never one fact twice (G3).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from qdrant_client import QdrantClient

from chaos.servers import PostgresServer, RedisServer
from coordinator import Fact, MemoryStore, Policy, TransactionAborted, Vote, Write
from coordinator.abc import Storage
from coordinator.embeddings import HashingEmbedder
from participants.postgres import PostgresStorage
from participants.qdrant import QdrantIndex
from participants.qdrant._edge import EdgeClient
from participants.redis import RedisStorage
from participants.sqlite import SQLiteStorage

SESSIONS = [None, "s1", "s2"]
WORDS = ["tea", "coffee", "london", "paris", "cat", "dog", "blue", "green"]
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None

State = tuple[str, str | None] | None  # (content, session_id), or None: no such fact


@dataclass
class Tx:
    session_id: str | None
    changes: dict[str, tuple[State, State]]  # fact_id -> (before, after)
    kind: str = "write"
    rolled_back: bool = False


@dataclass
class Model:
    facts: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    log: list[Tx] = field(default_factory=list)

    def apply(self, session_id: str | None, after: dict[str, State], kind: str = "write") -> Tx:
        tx = Tx(session_id, {f: (self.facts.get(f), a) for f, a in after.items()}, kind)
        for fact_id, state in after.items():
            self.versions[fact_id] = self.versions.get(fact_id, 0) + 1
            if state is None:
                self.facts.pop(fact_id, None)
            else:
                self.facts[fact_id] = state
        self.log.append(tx)
        return tx


class FlakyIndex(QdrantIndex):
    """A Qdrant index whose prepare fails while ``failing`` is set."""

    failing = False

    def prepare(self, txid: str, writes: Sequence[Write]) -> Vote:
        if self.failing:
            raise ConnectionError("injected: vector store unreachable")
        return super().prepare(txid, writes)


class MemoryMachine(RuleBasedStateMachine):
    policy = Policy()

    def storage(self) -> Storage:
        return SQLiteStorage(self.dir / "facts.db")

    def vectors(self) -> QdrantClient | EdgeClient:
        return QdrantClient(":memory:")

    @initialize()
    def open_store(self) -> None:
        self.dir = Path(tempfile.mkdtemp(dir=SCRATCH))
        self.index = FlakyIndex(
            self.vectors(),
            "memories",
            text_field="content",
            embedder=HashingEmbedder(32),
            owns_client=True,
        )
        self.mem = MemoryStore(self.storage(), hooks=[self.index], policy=self.policy)
        self.model = Model()
        self.counter = 0

    def teardown(self) -> None:
        if hasattr(self, "mem"):
            self.mem.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def attempt(self, fail_index: bool, action: object, touches_index: bool = True) -> bool:
        """Run ``action``; if the failing index takes part, it must abort and change nothing."""
        fail_index = fail_index and touches_index
        self.index.failing = fail_index
        try:
            action()  # type: ignore[operator]
        except TransactionAborted:
            assert fail_index, "only the injected failure may abort here"
            return False
        finally:
            self.index.failing = False
        assert not fail_index, "the index failed but the change committed"
        return True

    @rule(word=st.sampled_from(WORDS), session=st.sampled_from(SESSIONS), fail=st.booleans())
    def commit(self, word: str, session: str | None, fail: bool) -> None:
        self.counter += 1  # ids must not be random: Hypothesis replays draws by position
        fact = Fact(
            id=f"fact-{self.counter}",
            type="note",
            payload={"content": f"about {word}"},
            session_id=session,
        )
        if self.attempt(fail, lambda: self.mem.commit(fact)):
            self.model.apply(session, {fact.id: (f"about {word}", session)})

    @rule(data=st.data(), word=st.sampled_from(WORDS), fail=st.booleans())
    def update(self, data: st.DataObject, word: str, fail: bool) -> None:
        if not self.model.facts:
            return
        fact_id = data.draw(st.sampled_from(sorted(self.model.facts)))
        session = self.model.facts[fact_id][1]
        patch = {"payload": {"content": f"now {word}"}}
        if self.attempt(fail, lambda: self.mem.update(fact_id, patch)):
            self.model.apply(session, {fact_id: (f"now {word}", session)})

    @rule(data=st.data(), fail=st.booleans())
    def delete(self, data: st.DataObject, fail: bool) -> None:
        if not self.model.facts:
            return
        fact_id = data.draw(st.sampled_from(sorted(self.model.facts)))
        session = self.model.facts[fact_id][1]
        if self.attempt(fail, lambda: self.mem.delete(session, fact_id)):
            self.model.apply(session, {fact_id: None})

    @rule(data=st.data(), word=st.sampled_from(WORDS), fail=st.booleans())
    def recreate(self, data: st.DataObject, word: str, fail: bool) -> None:
        """Commit a deleted fact's id again: its versions continue where history ends."""
        deleted = sorted(set(self.model.versions) - set(self.model.facts))
        if not deleted:
            return
        fact_id = data.draw(st.sampled_from(deleted))
        fact = Fact(id=fact_id, type="note", payload={"content": f"again {word}"})
        if self.attempt(fail, lambda: self.mem.commit(fact)):
            self.model.apply(None, {fact_id: (f"again {word}", None)})

    @rule(steps=st.integers(1, 3), session=st.sampled_from(SESSIONS), fail=st.booleans())
    def rollback(self, steps: int, session: str | None, fail: bool) -> None:
        undone = [
            tx
            for tx in reversed(self.model.log)
            if tx.kind == "write"
            and not tx.rolled_back
            and (session is None or tx.session_id == session)
        ][:steps]
        target: dict[str, State] = {}
        for tx in undone:  # newest first, so the oldest "before" wins
            for fact_id, (before, _) in tx.changes.items():
                target[fact_id] = before
        changes = {f: s for f, s in target.items() if self.model.facts.get(f) != s}
        rollback = lambda: self.mem.rollback(steps, session_id=session)
        if self.attempt(fail, rollback, touches_index=bool(changes)):
            for tx in undone:
                tx.rolled_back = True
            if undone:
                self.model.apply(session, changes, kind="rollback")

    @rule(session=st.sampled_from(["s1", "s2"]), fail=st.booleans())
    def promote(self, session: str, fail: bool) -> None:
        chosen = {f: (c, None) for f, (c, s) in self.model.facts.items() if s == session}
        promote = lambda: self.mem.promote_session(session)
        if self.attempt(fail, promote, touches_index=bool(chosen)) and chosen:
            self.model.apply(session, dict(chosen))

    @rule(session=st.sampled_from(["s1", "s2"]), fail=st.booleans())
    def discard(self, session: str, fail: bool) -> None:
        doomed = {f: None for f, (_, s) in self.model.facts.items() if s == session}
        discard = lambda: self.mem.discard_session(session)
        if self.attempt(fail, discard, touches_index=bool(doomed)) and doomed:
            self.model.apply(session, dict(doomed))

    @invariant()
    def the_storage_holds_exactly_the_model(self) -> None:
        if not hasattr(self, "mem"):
            return
        held = {f["id"]: (f["payload"]["content"], f["session_id"]) for f in self.mem.query()}
        assert held == self.model.facts
        versions = {f["id"]: f["version"] for f in self.mem.query()}
        assert versions == {f: self.model.versions[f] for f in self.model.facts}

    @invariant()
    def the_index_holds_the_current_versions_and_nothing_else(self) -> None:
        if not hasattr(self, "mem"):
            return
        # (Runs after the search invariant, which has met any staged points still queued.)
        self.mem.flush()
        contents = self.index.contents()
        assert dict(contents.committed) == {f: self.model.versions[f] for f in self.model.facts}
        assert contents.pending == ()
        assert self.mem.verify().clean

    @invariant()
    def search_returns_committed_current_versions_once(self) -> None:
        if not hasattr(self, "mem") or not self.model.facts:
            return
        results = self.mem.search("about tea now london", k=10)
        ids = [r.fact["id"] for r in results]
        assert len(ids) == len(set(ids))
        if len(self.model.facts) <= 10:  # few points: every current fact is a hit (G4)
            assert set(ids) == set(self.model.facts)
        for r in results:
            assert r.fact["id"] in self.model.facts
            assert r.fact["version"] == self.model.versions[r.fact["id"]]
            assert r.fact["payload"]["content"] == self.model.facts[r.fact["id"]][0]


TestMemoryMachine = MemoryMachine.TestCase
# Inherits the loaded profile (max_examples); shorter runs keep CI within its budget.
TestMemoryMachine.settings = settings(stateful_step_count=30)


class DeferredMemoryMachine(MemoryMachine):
    """The same, with the index's phase 2 deferred: searches meet the staged points of
    committed transactions (and of refused ones) and must still return exactly the model."""

    policy = Policy(deferred_finish=True, deferred_batch=1000, deferred_max_age=1000.0)


TestDeferredMemoryMachine = DeferredMemoryMachine.TestCase
TestDeferredMemoryMachine.settings = settings(stateful_step_count=30)


class RedisMemoryMachine(MemoryMachine):
    """The same on a Redis storage (a new key prefix for every example)."""

    url = ""

    def storage(self) -> Storage:
        return RedisStorage(self.url, prefix=f"m{uuid.uuid4().hex[:12]}:")


class PostgresMemoryMachine(MemoryMachine):
    """The same on a Postgres storage (a new database for every example)."""

    server: PostgresServer | None = None

    def storage(self) -> Storage:
        assert self.server is not None
        return PostgresStorage(self.server.create_database(f"m{uuid.uuid4().hex[:12]}"))


class EdgeMemoryMachine(MemoryMachine):
    """The same on a Qdrant Edge index, which the index drives as a server, by filters."""

    def vectors(self) -> QdrantClient | EdgeClient:
        return EdgeClient(self.dir / "edge")


class DeferredEdgeMemoryMachine(EdgeMemoryMachine):
    """Qdrant Edge with phase 2 deferred: batches committed by filters, one log sync each."""

    policy = DeferredMemoryMachine.policy


# A quarter of the loaded profile's examples: a server's round trips make each step slower.
def _server_settings() -> settings:
    return settings(stateful_step_count=30, max_examples=max(10, settings().max_examples // 4))


def test_the_memory_machine_on_redis(redis_server: RedisServer) -> None:
    RedisMemoryMachine.url = redis_server.url
    run_state_machine_as_test(RedisMemoryMachine, settings=_server_settings())


@pytest.mark.parametrize("machine", [EdgeMemoryMachine, DeferredEdgeMemoryMachine])
def test_the_memory_machine_on_qdrant_edge(machine: type[MemoryMachine]) -> None:
    run_state_machine_as_test(machine, settings=_server_settings())


def test_the_memory_machine_on_postgres(postgres_server: PostgresServer) -> None:
    PostgresMemoryMachine.server = postgres_server
    run_state_machine_as_test(PostgresMemoryMachine, settings=_server_settings())
