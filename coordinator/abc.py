"""The contracts the coordinator depends on and others implement.

Participants (``participants.*``) and decision logs implement these Protocols; the
coordinator never imports them, so dependencies point one way: participants -> coordinator.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from coordinator.records import FactRecord, JSONValue, Write


class Vote(enum.StrEnum):
    """A participant's answer to ``prepare``."""

    YES = "yes"
    """Staged durably; the participant can commit or abort it later, even after a crash."""
    READ_ONLY = "read_only"
    """Nothing to commit; the participant leaves phase 2."""


class Decision(enum.StrEnum):
    """The outcome recorded in the decision log. No record means ABORT (presumed abort)."""

    COMMIT = "commit"
    ABORT = "abort"


@runtime_checkable
class AsyncParticipant(Protocol):
    """A store that can stage writes durably, then commit or abort them by ``txid``.

    Obligations:

    * ``prepare`` returns only once the staged writes survive a crash of every process.
      It refuses by raising (``VersionConflict`` when a fact's committed version is not the
      expected one or another transaction holds it staged). Preparing a txid twice is fine.
    * ``commit`` must succeed after a YES vote, is idempotent, and treats an unknown txid
      as already committed (the decision log, not the participant, knows the outcome).
    * ``abort`` is idempotent; an unknown txid is fine. It also fences the txid: a
      ``prepare`` of it arriving later (a call the coordinator gave up on) is refused, so
      no branch is left holding locks until recovery's timeout.
    * ``recover`` lists the txids prepared here and not yet committed or aborted.
    * All four may be called from another process than the one that prepared.
    """

    @property
    def name(self) -> str:
        """Stable name of this participant: recorded in the decision log, used in branch ids."""
        ...

    async def prepare(self, txid: str, writes: Sequence[Write]) -> Vote: ...

    async def commit(self, txid: str) -> None: ...

    async def abort(self, txid: str) -> None: ...

    async def recover(self) -> list[str]: ...

    async def close(self) -> None: ...


@runtime_checkable
class Participant(Protocol):
    """The synchronous twin of :class:`AsyncParticipant`: same names, same obligations."""

    @property
    def name(self) -> str: ...

    def prepare(self, txid: str, writes: Sequence[Write]) -> Vote: ...

    def commit(self, txid: str) -> None: ...

    def abort(self, txid: str) -> None: ...

    def recover(self) -> list[str]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncSupportsOnePhase(Protocol):
    """A participant that can apply writes in one local atomic step.

    ``commit_one_phase`` either commits everything and returns, or commits nothing and
    raises (``VersionConflict`` on a version conflict). If it cannot know which
    (a connection cut during a remote commit), it raises ``TransactionInDoubt``.
    """

    async def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None: ...


@runtime_checkable
class AsyncSupportsBatchResolve(Protocol):
    """A participant that resolves many branches in one step (recovery's fast path).

    ``commit_many``/``abort_many`` have exactly the effect of ``commit``/``abort`` on each
    txid (idempotent, unknown txids ignored), done together: one local transaction, one
    batched request. On an error nothing may be assumed; recovery falls back to resolving
    the branches one by one.
    """

    async def commit_many(self, txids: Sequence[str]) -> None: ...

    async def abort_many(self, txids: Sequence[str]) -> None: ...


@runtime_checkable
class SupportsBatchResolve(Protocol):
    """The synchronous twin of :class:`AsyncSupportsBatchResolve`."""

    def commit_many(self, txids: Sequence[str]) -> None: ...

    def abort_many(self, txids: Sequence[str]) -> None: ...


@runtime_checkable
class SupportsOnePhase(Protocol):
    """The synchronous twin of :class:`AsyncSupportsOnePhase`."""

    def commit_one_phase(self, txid: str, writes: Sequence[Write]) -> None: ...


@runtime_checkable
class AsyncSupportsLastResource(Protocol):
    """A participant whose database also holds the decision log (the last-resource option).

    ``commit_with_decision`` applies ``writes`` and inserts-if-absent the COMMIT decision
    for ``txid`` (naming ``participants``) in one local transaction. It raises
    ``TransactionAborted`` when a decision already exists (recovery fenced the txid) or the
    writes are refused, and ``TransactionInDoubt`` when it cannot tell whether its local
    commit happened.
    """

    async def commit_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> None: ...


@runtime_checkable
class SupportsLastResource(Protocol):
    """The synchronous twin of :class:`AsyncSupportsLastResource`."""

    def commit_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> None: ...


@runtime_checkable
class AsyncStagedCommit(Protocol):
    """A last resource's local transaction, staged and left open (see
    :class:`AsyncSupportsStagedLastResource`). Each method ends it; call one, once."""

    async def commit(self, participants: Sequence[str]) -> None:
        """Commit it, naming ``participants`` in the COMMIT record: the commit point.

        :raises TransactionInDoubt: the connection failed during COMMIT.
        """
        ...

    async def rollback(self) -> None:
        """Roll it back: its writes and its COMMIT record were never there."""
        ...


@runtime_checkable
class StagedCommit(Protocol):
    """The synchronous twin of :class:`AsyncStagedCommit`."""

    def commit(self, participants: Sequence[str]) -> None: ...

    def rollback(self) -> None: ...


@runtime_checkable
class AsyncSupportsStagedLastResource(Protocol):
    """A last resource that can stage its local transaction while the others prepare.

    ``stage_with_decision`` does all of ``commit_with_decision`` but the COMMIT: the
    writes are checked and written, the COMMIT record (naming ``participants``) is inserted,
    and the transaction is left open, holding its locks, until the returned handle commits
    or rolls it back. It raises what ``commit_with_decision`` raises for a refusal, and
    leaves nothing open when it does.
    """

    async def stage_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> AsyncStagedCommit: ...


@runtime_checkable
class SupportsStagedLastResource(Protocol):
    """The synchronous twin of :class:`AsyncSupportsStagedLastResource`."""

    def stage_with_decision(
        self, txid: str, writes: Sequence[Write], participants: Sequence[str]
    ) -> StagedCommit: ...


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One row of the decision log.

    :ivar participants: the participants that voted YES (for COMMIT) or were found holding
        the branch (for an ABORT written by recovery).
    :ivar decided_at: Unix time of the decision.
    :ivar ended: every listed participant acknowledged phase 2 (written lazily).
    """

    txid: str
    decision: Decision
    participants: tuple[str, ...]
    decided_at: float
    ended: bool = False


class DecisionLog(Protocol):
    """Durable, decide-once storage of transaction outcomes (synchronous, thread-safe).

    Deciding is an insert-if-absent: the first decision for a txid wins and every later
    call returns it. ``decide`` returns only once the winning decision is durable.
    """

    def decide(self, txid: str, decision: Decision, participants: Sequence[str]) -> Decision: ...

    def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]: ...

    def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]: ...

    def unended(self) -> list[DecisionRecord]: ...

    def end(self, txids: Iterable[str]) -> None: ...

    def close(self) -> None: ...


class AsyncDecisionLog(Protocol):
    """The asynchronous twin of :class:`DecisionLog`: same names, awaited."""

    async def decide(
        self, txid: str, decision: Decision, participants: Sequence[str]
    ) -> Decision: ...

    async def decide_many(
        self, decisions: Sequence[tuple[str, Decision, Sequence[str]]]
    ) -> dict[str, Decision]: ...

    async def records(self, txids: Iterable[str]) -> dict[str, DecisionRecord]: ...

    async def unended(self) -> list[DecisionRecord]: ...

    async def end(self, txids: Iterable[str]) -> None: ...

    async def close(self) -> None: ...


# -- what the memory API reads ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionEntry:
    """One committed transaction as a storage recorded it (newest has the highest seq)."""

    seq: int
    txid: str
    session_id: str | None
    kind: str
    undoes: tuple[str, ...]
    rolled_back_by: str | None
    committed_at: float
    actor: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class UndoReads:
    """What undoing some transactions reads from a storage (:meth:`AsyncStorage.undo_reads`).

    :ivar before: for each fact they wrote, the history record of the version before the
        earliest one they wrote (absent: they created the fact).
    :ivar heads: for each fact they wrote (its keys are those facts), what
        :meth:`AsyncStorage.head` returns: its committed state (``None``: deleted) and the
        newest version its history holds.
    """

    before: Mapping[str, FactRecord]
    heads: Mapping[str, tuple[FactRecord | None, int]]


def versions_before(written: Iterable[FactRecord]) -> list[tuple[str, int]]:
    """The ``(fact_id, version)`` of the version before each fact's earliest one among
    the records ``written`` (facts they created have none): the ``before`` of
    :class:`UndoReads`."""
    earliest: dict[str, int] = {}
    for record in written:
        earliest[record.id] = min(earliest.get(record.id, record.version), record.version)
    return [(fact_id, version - 1) for fact_id, version in sorted(earliest.items()) if version > 1]


@dataclass(frozen=True, slots=True)
class Hit:
    """A vector index's answer: the point's fact, the version it embeds, its similarity,
    the transaction that wrote it, and whether that transaction's phase 2 marked it
    committed (a staged point is only the fact's current version if ``txid`` is the
    transaction that committed that version in the storage)."""

    fact_id: str
    version: int
    score: float
    txid: str | None = None
    committed: bool = True

    def is_current(self, fact: FactRecord | None) -> bool:
        """True when this point embeds ``fact``'s committed version (``None``: no fact).

        A committed point is checked by version (phase 2 marks only decided points); a
        staged one also by txid, since a transaction the storage refused may have staged
        the same version (G3)."""
        if fact is None or fact.deleted or fact.version != self.version:
            return False
        return self.committed or (self.txid is not None and self.txid == fact.txid)


@dataclass(frozen=True, slots=True)
class IndexContents:
    """What an index holds: committed ``fact_id -> version``, and txids still pending.

    ``fields``: for each fact, the configured metadata fields its committed point carries
    (those present), so ``verify`` can tell a point written before a field was configured
    (a search filter on that field would miss it); an index that leaves it empty is
    compared by version only.
    """

    committed: Mapping[str, int]
    pending: tuple[str, ...]
    fields: Mapping[str, Mapping[str, JSONValue]] = field(default_factory=dict)


class Embedder(Protocol):
    """Turns texts into vectors of ``dim`` floats (deterministic for a given input).

    ``embed_query`` embeds a search query; models trained with separate query and passage
    prefixes (e5) use it; others return ``embed([text])[0]``.

    The async memory API calls an embedder in a worker thread, so a model does not hold up
    the event loop; an embedder whose calls take microseconds (pure Python, such as
    :class:`~coordinator.embeddings.HashingEmbedder`) may set ``inline = True`` to be
    called on the loop instead, as the hop to a thread costs more (about 0.15 ms).

    An embedder may name its model with a ``name`` attribute (a str): an index records it
    when it creates a collection, and refuses to open that collection with an embedder
    of another name, whose vectors would not be comparable (the dimension alone does not
    tell two models apart). Without a name nothing is recorded or checked.
    """

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


@runtime_checkable
class AsyncStorage(AsyncParticipant, Protocol):
    """A participant that is the source of truth for facts, and what the memory API reads.

    Reads return committed data only (G3): never a staged or aborted version.
    """

    async def get(self, fact_id: str) -> FactRecord | None: ...

    async def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]: ...

    async def head(self, fact_id: str) -> tuple[FactRecord | None, int]:
        """The fact's committed state (``None``: never written, or deleted) and the
        newest version its history holds (0: never written), in one read: what a write
        needs to number the fact's next version."""
        ...

    async def query(
        self,
        typename: str | None,
        filters: Mapping[str, JSONValue],
        session_id: str | None,
    ) -> list[FactRecord]: ...

    async def history(self, fact_id: str) -> list[FactRecord]: ...

    async def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]:
        """The history records of these ``(fact_id, version)`` pairs (absent ones left
        out), each found directly, whatever the length of the fact's history."""
        ...

    async def written_by(self, txids: Sequence[str]) -> list[FactRecord]: ...

    async def undo_reads(self, txids: Sequence[str]) -> UndoReads:
        """What a rollback of ``txids`` reads, in one read of the store: the versions the
        facts they wrote go back to, and those facts' heads. It need not be one
        snapshot: history records never change, and the rollback's commit expects the
        heads' versions (a fact changed since fails it with ``VersionConflict``)."""
        ...

    async def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]: ...

    async def all_facts(self) -> list[FactRecord]: ...


@runtime_checkable
class Storage(Participant, Protocol):
    """The synchronous twin of :class:`AsyncStorage`."""

    def get(self, fact_id: str) -> FactRecord | None: ...

    def get_many(self, fact_ids: Sequence[str]) -> dict[str, FactRecord]: ...

    def head(self, fact_id: str) -> tuple[FactRecord | None, int]: ...

    def query(
        self,
        typename: str | None,
        filters: Mapping[str, JSONValue],
        session_id: str | None,
    ) -> list[FactRecord]: ...

    def history(self, fact_id: str) -> list[FactRecord]: ...

    def versions(self, keys: Sequence[tuple[str, int]]) -> list[FactRecord]: ...

    def written_by(self, txids: Sequence[str]) -> list[FactRecord]: ...

    def undo_reads(self, txids: Sequence[str]) -> UndoReads: ...

    def transactions(self, session_id: str | None, limit: int) -> list[TransactionEntry]: ...

    def all_facts(self) -> list[FactRecord]: ...


@runtime_checkable
class AsyncIndex(AsyncParticipant, Protocol):
    """A participant derived from the facts: a vector index the memory API searches.

    ``text_of`` says what text of a fact the index embeds (``None``: the index does not
    hold this fact). ``search`` returns upsert points, staged and committed, best first;
    the caller keeps only current ones (:meth:`Hit.is_current`), so an index's phase 2
    may be deferred.
    """

    @property
    def embedder(self) -> Embedder: ...

    @property
    def metadata_fields(self) -> tuple[str, ...]:
        """Payload fields the index stores, so searches can filter on them."""
        ...

    def text_of(self, fact: FactRecord) -> str | None: ...

    async def search(
        self, vector: Sequence[float], k: int, where: Mapping[str, JSONValue]
    ) -> list[Hit]: ...

    async def contents(self) -> IndexContents: ...


@runtime_checkable
class Index(Participant, Protocol):
    """The synchronous twin of :class:`AsyncIndex`."""

    @property
    def embedder(self) -> Embedder: ...

    @property
    def metadata_fields(self) -> tuple[str, ...]: ...

    def text_of(self, fact: FactRecord) -> str | None: ...

    def search(
        self, vector: Sequence[float], k: int, where: Mapping[str, JSONValue]
    ) -> list[Hit]: ...

    def contents(self) -> IndexContents: ...


OWN_TYPE_PREFIX = "lockstep:"
"""Fact types beginning with this are Lockstep's own records (the LangGraph checkpoint
saver's): the storage and its mirrors keep them, no index holds them."""


def is_own_type(typename: str) -> bool:
    """Whether facts of this type are Lockstep's own records (see :data:`OWN_TYPE_PREFIX`)."""
    return typename.startswith(OWN_TYPE_PREFIX)


def indexed_text(index: AsyncIndex | Index, fact: FactRecord) -> str | None:
    """The text ``index`` embeds for ``fact``, or ``None`` when it does not hold the fact
    (its own choice, or one of Lockstep's own records). The memory API, ``verify`` and
    ``repair`` ask here, never ``text_of`` directly, so they agree on what an index holds.
    """
    return None if is_own_type(fact.type) else index.text_of(fact)


def embedder_name(embedder: object) -> str | None:
    """The model an embedder names (its ``name`` attribute, when a non-empty str)."""
    name = getattr(embedder, "name", None)
    return name if isinstance(name, str) and name else None
