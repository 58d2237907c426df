"""Identifiers, the error tree and policy validation."""

from __future__ import annotations

import pickle
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator import Policy, UsageError, errors, new_txid
from coordinator.ids import check_participant_name, check_txid, txid_time


def test_txids_are_uuid7_hex_and_carry_their_creation_time() -> None:
    before = time.time()
    txid = new_txid()
    assert len(txid) == 32 and txid[12] == "7" and txid[16] in "89ab"
    assert check_txid(txid) == txid
    assert before - 0.002 <= txid_time(txid) <= time.time() + 0.002


@given(st.floats(min_value=0, max_value=2**47 / 1000))
def test_txid_time_round_trips(now: float) -> None:
    assert abs(txid_time(new_txid(now=now)) - now) < 0.001


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("x" * 65, "XA limit is 64"),
        ("not-a-uuid", "not a UUIDv7"),
        ("0" * 32, "not a UUIDv7"),
        (42, "must be a str"),
    ],
)
def test_bad_txids_are_refused_with_the_reason(bad: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_txid(bad)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("p" * 65, "XA branch limit is 64"),
        ("", "letters, digits"),
        ("a b", "letters"),
        (None, "str"),
    ],
)
def test_bad_participant_names_are_refused(bad: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_participant_name(bad)


def test_the_error_tree_groups_by_what_the_caller_knows() -> None:
    assert issubclass(errors.VersionConflict, errors.TransactionAborted)
    assert issubclass(errors.VersionConflict, errors.ConflictError)
    assert issubclass(errors.ImmutableViolation, errors.ConflictError)
    assert not issubclass(errors.ImmutableViolation, errors.TransactionAborted)
    assert issubclass(errors.PrepareTimeout, TimeoutError)
    assert errors.HookError is errors.TransactionAborted
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.LockstepError)
        assert name in (errors.__doc__ or ""), f"{name} is missing from the drawn tree"


@pytest.mark.parametrize(
    "name", [n for n in errors.__all__ if n not in ("HookError", "MemoryStoreError")]
)
def test_every_error_pickles_with_its_attributes(name: str) -> None:
    cls = getattr(errors, name)
    err = cls("something broke", txid="t1", participant="p1")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert (copy.message, copy.txid, copy.participant) == ("something broke", "t1", "p1")
    assert str(copy) == str(err) == "something broke (participant='p1', txid=t1)"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prepare_timeout", 0),
        ("in_doubt_timeout", -1),
        ("finish_attempts", 0),
        ("finish_backoff", -1),
    ],
)
def test_policy_refuses_nonsense(field: str, value: float) -> None:
    with pytest.raises(UsageError, match=field):
        Policy(**{field: value})  # type: ignore[arg-type]


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = Policy(finish_backoff=0.1, finish_backoff_max=0.3)
    assert [policy.backoff(i) for i in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]
