"""Effects the core asks its driver to perform, and the replies it expects back.

Effects are imperative (``PrepareAll``); replies are past participles (``Prepared``).
A driver must answer each effect with exactly the reply type named in its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from coordinator.abc import Decision, DecisionRecord, Vote

# -- the commit protocol ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepareAll:
    """Prepare every participant in ``participants``; with ``stage``, also stage that last
    resource at the same time (its writes and the COMMIT record, naming ``participants``
    and itself, in a local transaction left open). Reply: :class:`Prepared`, with the
    staged participant's vote among the others (``YES`` once staged).
    """

    txid: str
    participants: tuple[str, ...]
    stage: str | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """Each participant's vote, or the exception it raised (``TimeoutError`` on timeout)."""

    votes: Mapping[str, Vote | BaseException]


@dataclass(frozen=True, slots=True)
class CommitOnePhase:
    """Commit the only participant in one local step. Reply: :class:`CommittedOnePhase`."""

    txid: str
    participant: str


@dataclass(frozen=True, slots=True)
class CommittedOnePhase:
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class CommitLastResource:
    """Commit the last resource in one local transaction that also records COMMIT for
    ``txid`` (naming ``participants``) in the decision log it holds: the transaction
    ``PrepareAll`` staged, or a new one. That commit is the commit point.
    Reply: :class:`CommittedOnePhase`.
    """

    txid: str
    participant: str
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RollBackStaged:
    """Roll back the last resource's staged transaction: now if it is staged, as soon as
    it is if its staging is still running, not at all if staging failed. Reply: ``None``.
    """

    txid: str
    participant: str


@dataclass(frozen=True, slots=True)
class PersistDecision:
    """Insert-if-absent ``decision`` for ``txid``; durable before the reply.

    Reply: :class:`DecisionPersisted` with the winning decision, or the log's error.
    """

    txid: str
    decision: Decision
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DecisionPersisted:
    decision: Decision | None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class AbortAll:
    """Abort ``txid`` on every participant listed. Reply: :class:`Finished`."""

    txid: str
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FinishAll:
    """Commit ``txid`` on every participant listed. Reply: :class:`Finished`."""

    txid: str
    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DeferFinish:
    """Queue ``txid``'s phase 2 on these participants, to be done later in a batch (the
    caller's reads do not depend on it); once they are finished, record END if ``end``
    (every other branch acknowledged). Reply: ``None``."""

    txid: str
    participants: tuple[str, ...]
    end: bool


@dataclass(frozen=True, slots=True)
class Finished:
    """The participants whose call raised, with the exception; the others succeeded."""

    failed: Mapping[str, BaseException] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pause ``seconds`` before the next attempt. Reply: ``None``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class RecordEnd:
    """Note, lazily (no forced write), that these transactions are finished. Reply: ``None``."""

    txids: tuple[str, ...]


# -- recovery ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListInDoubt:
    """Ask every participant for its prepared branches. Reply: :class:`InDoubtListed`."""

    participants: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InDoubtListed:
    """Branches by participant; participants that could not answer; the Unix time now."""

    now: float
    branches: Mapping[str, tuple[str, ...]]
    failed: Mapping[str, BaseException] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReadRecords:
    """Read the decision records of ``txids`` and every record without END.

    Reply: :class:`RecordsRead`.
    """

    txids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecordsRead:
    records: Mapping[str, DecisionRecord]
    unended: tuple[DecisionRecord, ...]


@dataclass(frozen=True, slots=True)
class PersistDecisions:
    """Insert-if-absent several decisions at once (one forced write).

    Reply: :class:`DecisionsPersisted`.
    """

    decisions: tuple[tuple[str, Decision, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class DecisionsPersisted:
    """The winning decision of each txid (the log's errors are raised, not replied)."""

    decisions: Mapping[str, Decision]


@dataclass(frozen=True, slots=True)
class ResolveBranches:
    """Commit or abort branches: ``commit[participant]`` lists txids to commit there.

    Reply: :class:`BranchesResolved`.
    """

    commit: Mapping[str, tuple[str, ...]]
    abort: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class BranchesResolved:
    """The ``(participant, txid)`` branches whose call raised; the others succeeded."""

    failed: Mapping[tuple[str, str], BaseException] = field(default_factory=dict)


Effect = (
    PrepareAll
    | CommitOnePhase
    | CommitLastResource
    | RollBackStaged
    | PersistDecision
    | AbortAll
    | FinishAll
    | DeferFinish
    | Backoff
    | RecordEnd
    | ListInDoubt
    | ReadRecords
    | PersistDecisions
    | ResolveBranches
)
Reply = (
    Prepared
    | CommittedOnePhase
    | DecisionPersisted
    | Finished
    | InDoubtListed
    | RecordsRead
    | DecisionsPersisted
    | BranchesResolved
    | None
)
