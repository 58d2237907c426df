"""Lockstep's coordinator: atomic commits across an agent's memory stores.

The public surface: :class:`Coordinator` / :class:`AsyncCoordinator`, the participant and
decision-log contracts (:mod:`coordinator.abc`), the records a transaction writes
(:mod:`coordinator.records`), outcomes, policy and errors.
"""

from coordinator._async.coordinator import (
    AsyncCoordinator,
)
from coordinator._sync.coordinator import (
    Coordinator,
)
from coordinator.abc import (
    AsyncDecisionLog,
    AsyncParticipant,
    Decision,
    DecisionLog,
    DecisionRecord,
    Participant,
    Vote,
)
from coordinator.errors import (
    ConfigurationError,
    ConflictError,
    DecisionLogError,
    HeuristicOutcome,
    HookError,
    ImmutableViolation,
    LockstepError,
    MemoryStoreError,
    ParticipantError,
    PrepareTimeout,
    TransactionAborted,
    TransactionInDoubt,
    UsageError,
    ValidationFailed,
    VersionConflict,
    VoteRejected,
)
from coordinator.ids import (
    new_txid,
)
from coordinator.memory import (
    AsyncMemoryStore,
    AsyncMemoryTransaction,
    Constraint,
    Fact,
    MemoryStore,
    MemoryTransaction,
    SchemaRegistry,
    ScoredFact,
    VerifyReport,
)
from coordinator.outcomes import (
    Outcome,
    RecoveryReport,
)
from coordinator.policy import (
    Policy,
)
from coordinator.records import (
    DeleteFact,
    Execute,
    FactRecord,
    TransactionMeta,
    UpsertFact,
    Write,
)

__all__ = [
    "AsyncMemoryStore",
    "AsyncMemoryTransaction",
    "Constraint",
    "Fact",
    "MemoryStore",
    "MemoryStoreError",
    "MemoryTransaction",
    "SchemaRegistry",
    "ScoredFact",
    "VerifyReport",
    "AsyncCoordinator",
    "AsyncDecisionLog",
    "AsyncParticipant",
    "ConfigurationError",
    "ConflictError",
    "Coordinator",
    "Decision",
    "DecisionLog",
    "DecisionLogError",
    "DecisionRecord",
    "DeleteFact",
    "Execute",
    "FactRecord",
    "HeuristicOutcome",
    "HookError",
    "ImmutableViolation",
    "LockstepError",
    "Outcome",
    "Participant",
    "ParticipantError",
    "Policy",
    "PrepareTimeout",
    "RecoveryReport",
    "TransactionAborted",
    "TransactionInDoubt",
    "TransactionMeta",
    "UpsertFact",
    "UsageError",
    "ValidationFailed",
    "VersionConflict",
    "Vote",
    "VoteRejected",
    "Write",
    "new_txid",
]
