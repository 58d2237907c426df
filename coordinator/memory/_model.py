"""The memory API's public records: facts, scored search results, schemas, constraints."""

from __future__ import annotations

import json
import math
import re
import reprlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from coordinator.abc import OWN_TYPE_PREFIX, is_own_type
from coordinator.errors import UsageError, ValidationFailed
from coordinator.records import FactRecord, unstorable_int, unstorable_text

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _now() -> datetime:
    return datetime.now(UTC)


class Fact(BaseModel):
    """A fact as an agent writes it (MemState's ``Fact``), and as the store reports it.

    The store never mutates a ``Fact`` you pass in; it returns the committed state as a
    dict from ``get``/``query``/``history`` with ``version``, ``txid``, ``actor`` and
    ``reason`` filled in.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    type: str
    payload: dict[str, Any] = Field(default_factory=dict)
    source: str | None = None
    session_id: str | None = None
    ts: datetime = Field(default_factory=_now)
    version: int = 0
    actor: str | None = None
    reason: str | None = None
    txid: str | None = None
    deleted: bool = False

    @classmethod
    def from_record(cls, record: FactRecord) -> Fact:
        return cls(
            id=record.id,
            type=record.type,
            payload=dict(record.payload),
            source=record.source,
            session_id=record.session_id,
            ts=datetime.fromtimestamp(record.ts, UTC),
            version=record.version,
            actor=record.actor,
            reason=record.reason,
            txid=record.txid,
            deleted=record.deleted,
        )


def as_dict(record: FactRecord) -> dict[str, Any]:
    """The JSON-ready dict ``get``/``query``/``history`` return (MemState returns dicts):
    what ``Fact.from_record(record).model_dump(mode="json")`` returns, built directly when
    the payload is plain JSON (as every committed one is), a third of the cost of a read."""
    payload = _json_copy(record.payload)
    if payload is _NOT_PLAIN:
        return Fact.from_record(record).model_dump(mode="json")
    return {
        "id": record.id,
        "type": record.type,
        "payload": payload,
        "source": record.source,
        "session_id": record.session_id,
        "ts": datetime.fromtimestamp(record.ts, UTC).isoformat().replace("+00:00", "Z"),
        "version": record.version,
        "actor": record.actor,
        "reason": record.reason,
        "txid": record.txid,
        "deleted": record.deleted,
    }


_NOT_PLAIN: Any = object()
_SCALARS = frozenset({str, int, bool, type(None)})


def _json_copy(value: Any) -> Any:
    """A deep copy of plain JSON (str-keyed dicts, lists, str, int, finite floats, bools,
    ``None``), so callers never share the store's objects; ``_NOT_PLAIN`` for anything
    pydantic would convert (tuples, non-str keys, non-finite floats, other types)."""
    kind = type(value)
    if kind is dict:
        copied = {}
        for key, item in value.items():
            if type(key) is not str:
                return _NOT_PLAIN
            if type(item) not in _SCALARS and (item := _json_copy(item)) is _NOT_PLAIN:
                return _NOT_PLAIN
            copied[key] = item
        return copied
    if kind is list:
        items = []
        for item in value:
            if type(item) not in _SCALARS and (item := _json_copy(item)) is _NOT_PLAIN:
                return _NOT_PLAIN
            items.append(item)
        return items
    if kind is float:
        return value if math.isfinite(value) else _NOT_PLAIN
    return value if kind in _SCALARS else _NOT_PLAIN


class ScoredFact(BaseModel):
    """A search result: the committed fact (as a dict) and its similarity (higher: closer)."""

    model_config = ConfigDict(frozen=True)

    fact: dict[str, Any]
    score: float


@dataclass(frozen=True)
class Constraint:
    """Rules for one fact type.

    :param singleton_key: a payload field whose value is unique among facts of the type:
        committing a fact with an existing value updates that fact instead of inserting.
    :param immutable: facts of the type may be created but never changed or deleted.
    """

    singleton_key: str | None = None
    immutable: bool = False

    def __post_init__(self) -> None:
        if self.singleton_key is not None and not _KEY.fullmatch(self.singleton_key):
            raise UsageError(
                f"Constraint(singleton_key={self.singleton_key!r}): expected a payload field "
                "name (letters, digits, '_')"
            )


class SchemaRegistry:
    """Pydantic models by type name; validates payloads before anything is written."""

    def __init__(self) -> None:
        self._models: dict[str, type[BaseModel]] = {}

    def register(self, typename: str, model: type[BaseModel]) -> None:
        if not isinstance(typename, str) or not typename:
            raise UsageError(f"register_schema: typename must be a non-empty str, got {typename!r}")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise UsageError(
                f"register_schema: model must be a pydantic BaseModel class, got {model!r}"
            )
        self._models[typename] = model

    def type_of(self, model_class: type[BaseModel]) -> str | None:
        for typename, model in self._models.items():
            if model is model_class:
                return typename
        return None

    def validate(self, typename: str, payload: Any) -> dict[str, Any]:
        """The payload as the registered model dumps it; unregistered types pass through.

        :raises ValidationFailed: naming every field that does not fit.
        """
        if not isinstance(payload, dict):
            raise ValidationFailed(
                f"payload of a {typename!r} fact must be a dict, got {type(payload).__name__}"
            )
        model = self._models.get(typename)
        if model is None:
            check_json(typename, payload, _PLAIN_HINT)
            return dict(payload)
        try:
            dumped = model.model_validate(payload).model_dump(mode="json")
        except PydanticValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(payload)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise ValidationFailed(
                f"payload does not fit the {typename!r} schema ({model.__name__}): {problems}"
            ) from None
        check_json(
            typename,
            dumped,
            f"{model.__name__} lets it through: a float field can refuse NaN and infinity "
            "with Field(allow_inf_nan=False)",
        )
        return dumped


_PLAIN_HINT = (
    "A payload is JSON every store keeps: str (Unicode text without NUL), int (64-bit), finite "
    "float, bool, None, and lists and str-keyed dicts of them (a datetime as .isoformat(), "
    "for example); or register a pydantic schema for the type: commit_model() converts "
    "such values"
)


#: How deeply a payload's lists and dicts may nest. Python's JSON reader gives up near
#: 1,000 levels less the depth of the reader's own calls (a framework's may be hundreds
#: of frames), so a payload much deeper could be stored and then not read back; and
#: checking it here would itself run out of stack. MongoDB draws the line at 100 too.
MAX_DEPTH = 100


def check_json(typename: str, payload: dict[str, Any], hint: str) -> None:
    """Refuse a payload no store keeps as given, naming where, before anything is
    written: a value that is not JSON (a datetime, bytes, a set, NaN: Postgres refuses
    NaN, SQLite would read it back as ``None``), text with a NUL character or a lone
    surrogate (see :func:`~coordinator.records.unstorable_text`), an int outside 64
    bits (:func:`~coordinator.records.unstorable_int`), or lists and dicts nested deeper
    than :data:`MAX_DEPTH`. Each would otherwise fail in one store, or come back
    different, or not at all.

    :raises UsageError: naming the first such value, and what to do instead.
    """
    try:
        text = json.dumps(payload, allow_nan=False, ensure_ascii=False)
        refused = ""
    except (TypeError, ValueError) as exc:
        text, refused = "", str(exc)
    except RecursionError:
        text, refused = "", "it nests too deep for Python's JSON encoder"
    # Nesting deeper than MAX_DEPTH needs as many brackets (a str may hold some too).
    deep = not text or text.count("{") + text.count("[") > MAX_DEPTH
    if deep and (where := _too_deep(payload, "payload")) is not None:
        raise UsageError(
            f"the payload of a {typename!r} fact cannot be stored: {where} nests deeper "
            f"than {MAX_DEPTH} levels of lists and dicts, which Python's JSON reader may "
            "not read back; store the deep part as a JSON str instead"
        )
    # json.dumps writes a NUL as the six characters \u0000 (which a string may also hold),
    # and leaves a lone surrogate as it is, which UTF-8 cannot encode; an int outside 64
    # bits has 19 digits or more (as may a str, or an int in range: the walk tells).
    if refused or "\\u0000" in text or unstorable_text(text) or _LONG_DIGITS.search(text):
        where = _unstorable(payload, "payload") or refused
        if where:
            raise UsageError(
                f"the payload of a {typename!r} fact cannot be stored: {where}. {hint}"
            )


def check_text(what: str, value: object, *, required: bool = False) -> None:
    """Refuse an id, type, session, source, actor or reason no store could keep as given.

    :raises UsageError: ``value`` is not a str (or ``None`` where allowed), is empty where
        ``required``, or holds a NUL character or a lone surrogate.
    """
    if value is None and not required:
        return
    if not isinstance(value, str) or (required and not value):
        wanted = "a non-empty str" if required else "a str or None"
        raise UsageError(f"{what} must be {wanted}, got {value!r}")
    if (fault := unstorable_text(value)) is not None:
        raise UsageError(f"{what} {value!r} {fault}")


def check_user_type(what: str, typename: object) -> None:
    """Refuse a fact type a caller may not write through an integration: one
    :func:`check_text` refuses, or one of Lockstep's own (``lockstep:``…)."""
    check_text(what, typename, required=True)
    assert isinstance(typename, str)
    if is_own_type(typename):
        raise UsageError(
            f"{what} {typename!r}: types beginning {OWN_TYPE_PREFIX!r} are Lockstep's own"
        )


_LONG_DIGITS = re.compile(r"\d{19}")
_SHORT = reprlib.Repr()
_SHORT.maxother = _SHORT.maxstring = 60


def _too_deep(payload: Any, path: str) -> str | None:
    """Where ``payload`` first nests deeper than :data:`MAX_DEPTH` (a path, shortened),
    or ``None``; walked without recursion, since the payload may be deeper than the stack."""
    pending: list[tuple[Any, str, int]] = [(payload, path, 1)]
    while pending:
        value, where, depth = pending.pop()
        if isinstance(value, dict):
            items: Any = ((f"{where}.{key}", item) for key, item in value.items())
        elif isinstance(value, list | tuple):
            items = ((f"{where}[{i}]", item) for i, item in enumerate(value))
        else:
            continue
        if depth > MAX_DEPTH:
            return _SHORT.repr(where)[1:-1]
        pending.extend((item, inner, depth + 1) for inner, item in items)
    return None


def _unstorable(value: Any, path: str) -> str | None:
    """Where in ``value`` the first value no store keeps as given is, and what it is: one
    ``json.dumps(allow_nan=False)`` refuses, or text no store keeps as given."""
    if value is None:
        return None
    if isinstance(value, int):  # bool is an int, in range
        fault = unstorable_int(value)
        return None if fault is None else f"{path} ({value}) {fault}"
    if isinstance(value, str):
        fault = unstorable_text(value)
        return None if fault is None else f"{path} {fault}"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value!r}"
    if isinstance(value, dict):
        for key, item in value.items():
            if not (key is None or isinstance(key, str | int | float)):
                return f"{path} has a key of type {type(key).__name__} ({_SHORT.repr(key)})"
            if isinstance(key, str) and (fault := unstorable_text(key)) is not None:
                return f"{path} has a key ({key!r}) that {fault}"
            if (found := _unstorable(item, f"{path}.{key}")) is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (found := _unstorable(item, f"{path}[{i}]")) is not None:
                return found
        return None
    return f"{path} is a {type(value).__name__} ({_SHORT.repr(value)})"
