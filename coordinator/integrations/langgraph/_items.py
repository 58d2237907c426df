"""What LangGraph's long-term memory store and its items are as facts: pure functions
shared by the synchronous and the asynchronous store (no I/O here)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from langgraph.store.base import Item, MatchCondition, PutOp, SearchItem
from langgraph.store.base.embed import get_text_at_path, tokenize_path

from coordinator.abc import OWN_TYPE_PREFIX
from coordinator.errors import UsageError

UNINDEXED = OWN_TYPE_PREFIX + "store_item"
"""The type of an item put with ``index=False`` (or with no text to embed): the storage
keeps it, no index holds it."""
_NAMESPACE = uuid.UUID("5b0e8c1d-2f3a-4e6b-9d7c-8a1f0e2d3c4b")


def text_of(op: PutOp, fields: Sequence[str]) -> str:
    """The text the indexes embed for this put: its fields' texts, one per line."""
    if op.index is False or op.value is None:
        return ""
    paths = fields if op.index is None else op.index
    texts: list[str] = []
    for path in paths:
        if path == "$":
            texts.append(json.dumps(op.value, sort_keys=True, ensure_ascii=False))
        else:
            texts += get_text_at_path(op.value, tokenize_path(path))
    return "\n".join(t for t in texts if t.strip())


def item_id(namespace: Sequence[str], key: str) -> str:
    return f"lgstore:{uuid.uuid5(_NAMESPACE, json.dumps([list(namespace), key]))}"


def item(fact: dict[str, Any]) -> Item:
    payload = fact["payload"]
    return Item(
        value=payload["value"],
        key=payload["key"],
        namespace=tuple(payload["namespace"]),
        created_at=datetime.fromisoformat(payload["created_at"]),
        updated_at=fact["ts"],
    )


def search_item(fact: dict[str, Any], score: float | None) -> SearchItem:
    found = item(fact)
    return SearchItem(
        found.namespace, found.key, found.value, found.created_at, found.updated_at, score
    )


def fits(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    labels = namespace[: len(path)] if condition.match_type == "prefix" else namespace[-len(path) :]
    return all(p in ("*", label) for p, label in zip(path, labels, strict=True)) if path else True


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and float(a) > float(b),
    "$gte": lambda a, b: a is not None and float(a) >= float(b),
    "$lt": lambda a, b: a is not None and float(a) < float(b),
    "$lte": lambda a, b: a is not None and float(a) <= float(b),
}


def matches(value: Any, wanted: Any) -> bool:
    """LangGraph's filter semantics: equality, nested dicts, ``$eq``/``$ne``/``$gt``…"""
    if isinstance(wanted, dict):
        if any(key.startswith("$") for key in wanted):
            unknown = sorted(k for k in wanted if k not in _OPERATORS)
            if unknown:
                raise UsageError(f"search filter: unknown operators {unknown}")
            return all(_OPERATORS[op](value, operand) for op, operand in wanted.items())
        return isinstance(value, dict) and all(matches(value.get(k), v) for k, v in wanted.items())
    return bool(value == wanted)
