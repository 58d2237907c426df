"""Query filters: which keys may be filtered on, and how a filter matches a fact.

Filter keys are dotted paths (``"payload.role"``, ``"session_id"``); values are JSON
scalars matched by JSON equality (``None`` matches a missing or null field; ``true`` is not
``1``, ``"1"`` is not ``1``, ``1`` is ``1.0``), the same in every storage. Keys are checked
here, once, before any backend sees them, so no backend ever builds a query from an
unchecked key; values are always passed to backends as bound parameters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from coordinator.errors import UsageError
from coordinator.records import FactRecord, JSONValue, unstorable_int, unstorable_text

TOP_LEVEL = ("id", "type", "version", "session_id", "source", "actor", "reason", "txid")
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MAX_DEPTH = 8


def filterable(key: str, value: object) -> bool:
    """Whether ``{key: value}`` is a filter every store takes (see :func:`check_filters`)."""
    try:
        check_filters({key: value})
    except UsageError:
        return False
    return True


def check_filters(filters: object) -> dict[tuple[str, ...], JSONValue]:
    """Return the filters as ``{path: value}``, or raise :class:`UsageError` naming the key."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise UsageError(f"filters must be a dict of key -> value, got {type(filters).__name__}")
    checked: dict[tuple[str, ...], JSONValue] = {}
    for key, value in filters.items():
        if not isinstance(key, str):
            raise UsageError(f"filter key {key!r} must be a str")
        path = tuple(key.split("."))
        if not all(_SEGMENT.fullmatch(p) for p in path) or len(path) > _MAX_DEPTH:
            raise UsageError(
                f"filter key {key!r} is malformed: expected dotted names of letters, digits "
                "and '_' (e.g. 'payload.role')"
            )
        if path[0] == "payload":
            if len(path) < 2:
                raise UsageError(f"filter key {key!r} must name a payload field: 'payload.<field>'")
        elif len(path) != 1 or path[0] not in TOP_LEVEL:
            raise UsageError(
                f"filter key {key!r} is unknown: use 'payload.<field>' or one of {list(TOP_LEVEL)}"
            )
        if value is not None and not isinstance(value, str | int | float | bool):
            raise UsageError(
                f"filter {key!r}: value must be a str, number, bool or None, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, str) and (fault := unstorable_text(value)) is not None:
            raise UsageError(f"filter {key!r}: the value {value!r} {fault}")
        if isinstance(value, int) and (fault := unstorable_int(value)) is not None:
            raise UsageError(f"filter {key!r}: the value {value} {fault}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"filter {key!r}: the value must be a finite number, got {value}")
        checked[path] = value
    return checked


def lookup(fact: FactRecord, path: tuple[str, ...]) -> JSONValue:
    """The value at ``path`` in ``fact`` (``None`` when missing)."""
    if path[0] != "payload":
        return getattr(fact, path[0])
    node: object = fact.payload
    for part in path[1:]:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def matches(fact: FactRecord, filters: Mapping[tuple[str, ...], JSONValue]) -> bool:
    """True when every filter matches ``fact``: equality of JSON values, so a string never
    equals a number and ``true`` never equals ``1`` (as in Postgres' jsonb), while ``1``
    equals ``1.0``."""
    for path, wanted in filters.items():
        found = lookup(fact, path)
        if wanted is None:
            if found is not None:
                return False
        elif (
            isinstance(found, Mapping | list)
            or found is None
            or found != wanted
            or isinstance(found, str) != isinstance(wanted, str)
            or isinstance(found, bool) != isinstance(wanted, bool)
        ):
            return False
    return True
