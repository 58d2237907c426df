"""Every error Lockstep raises, grouped by what the caller knows about the outcome.

::

    LockstepError                     base of everything; picklable; carries txid/participant when known
    ├── UsageError                    a programming mistake: bad arguments, wrong state, bad config
    │   └── ConfigurationError        a store or setting that cannot work as configured
    ├── ValidationFailed              a payload does not fit its schema; nothing was written
    ├── TransactionAborted            outcome KNOWN: nothing committed anywhere; safe to retry
    │   ├── VoteRejected              a participant voted no, or failed while preparing
    │   ├── PrepareTimeout            a participant did not vote in time (also a TimeoutError)
    │   └── VersionConflict           a concurrent writer won (also a ConflictError); retry
    ├── ConflictError                 MemState's name, kept: the fact cannot be written as asked
    │   ├── VersionConflict           (see above)
    │   └── ImmutableViolation        the fact may not change; do not retry
    ├── TransactionInDoubt            outcome UNKNOWN to this caller; recovery settles it;
    │                                 do not retry blindly, ask by txid
    ├── HeuristicOutcome              a store broke atomicity behind our back; page someone
    ├── ParticipantError              a store failed; the backend's exception is the __cause__
    └── DecisionLogError              the decision log failed; the cause is chained

    HookError                         alias of TransactionAborted, for MemState code
    MemoryStoreError                  alias of LockstepError, for MemState code

Once the COMMIT decision is durable, ``commit`` never raises: it returns an ``Outcome``
whose ``unfinished`` lists the branches that recovery will finish.
"""

from __future__ import annotations

from typing import Any


class LockstepError(Exception):
    """Base of every Lockstep error.

    :param message: what went wrong, for a person.
    :param txid: the transaction concerned, when there is one.
    :param participant: the participant concerned, when there is one.
    """

    def __init__(
        self, message: str, *, txid: str | None = None, participant: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.txid = txid
        self.participant = participant

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (chaos runs, recovery workers): keep the
        # keyword attributes through pickling.
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))

    def __str__(self) -> str:
        where = []
        if self.participant is not None:
            where.append(f"participant={self.participant!r}")
        if self.txid is not None:
            where.append(f"txid={self.txid}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


def _rebuild(cls: type[LockstepError], message: str, state: dict[str, Any]) -> LockstepError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class UsageError(LockstepError, ValueError):
    """The caller made a programming mistake; nothing was written."""


class ConfigurationError(UsageError):
    """A store or setting cannot work as configured (the message names the setting)."""


class ValidationFailed(LockstepError, ValueError):
    """A payload does not fit its registered schema; nothing was written."""


class TransactionAborted(LockstepError):
    """Nothing was committed in any store. Safe to retry."""


class ConflictError(LockstepError):
    """The fact cannot be written as asked (MemState's name for this family)."""


class VoteRejected(TransactionAborted):
    """A participant voted no, or failed while preparing; everything was aborted."""


class PrepareTimeout(TransactionAborted, TimeoutError):
    """A participant did not vote within the prepare timeout; everything was aborted."""


class VersionConflict(TransactionAborted, ConflictError):
    """Another writer changed or locked the fact first. Retry on fresh data."""


class ImmutableViolation(ConflictError):
    """The fact is immutable and may not change. Do not retry."""


class TransactionInDoubt(LockstepError):
    """The outcome is not known to this caller; recovery will settle it.

    Do not retry blindly: ask for the transaction's decision by ``txid`` first.
    """


class HeuristicOutcome(LockstepError):
    """A store lost or changed data behind the protocol's back; atomicity is broken."""


class ParticipantError(LockstepError):
    """A participant failed; the backend's exception is chained as ``__cause__``."""


class DecisionLogError(LockstepError):
    """The decision log failed; the cause is chained as ``__cause__``."""


HookError = TransactionAborted
"""MemState raised ``HookError`` when a store refused a change; code catching it keeps working."""

MemoryStoreError = LockstepError
"""MemState's base error name, kept so ``except MemoryStoreError`` keeps working."""

__all__ = [
    "ConfigurationError",
    "ConflictError",
    "DecisionLogError",
    "HeuristicOutcome",
    "HookError",
    "ImmutableViolation",
    "LockstepError",
    "MemoryStoreError",
    "ParticipantError",
    "PrepareTimeout",
    "TransactionAborted",
    "TransactionInDoubt",
    "UsageError",
    "ValidationFailed",
    "VersionConflict",
    "VoteRejected",
]
