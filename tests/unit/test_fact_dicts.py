"""The dicts ``get``/``query``/``history`` return: exactly pydantic's JSON dump of the fact."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from coordinator.memory._model import Fact, as_dict
from coordinator.records import FactRecord

_plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
# What a payload may hold before it is committed (an unregistered type passes through
# as given): pydantic converts these, and so must ``as_dict``.
_odd = st.recursive(
    _plain | st.just(math.nan) | st.tuples(st.integers(), st.text()) | st.just({1: "one"}),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
_name = st.none() | st.text(max_size=8)


@st.composite
def _records(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> FactRecord:
    return FactRecord(
        draw(st.text(min_size=1, max_size=12)),
        draw(st.text(min_size=1, max_size=12)),
        draw(st.dictionaries(st.text(max_size=6), values, max_size=5)),
        draw(st.integers(min_value=0, max_value=10**6)),
        draw(_name),
        draw(_name),
        draw(_name),
        draw(_name),
        draw(st.floats(min_value=-(10**9), max_value=253402300799.0)),
        draw(_name),
        draw(st.booleans()),
    )


@given(_records(_plain) | _records(_odd))
def test_as_dict_is_pydantics_json_dump(record: FactRecord) -> None:
    assert as_dict(record) == Fact.from_record(record).model_dump(mode="json")


@given(_records(_plain))
def test_as_dict_shares_nothing_with_the_record(record: FactRecord) -> None:
    before = Fact.from_record(record).model_dump(mode="json")["payload"]
    returned = as_dict(record)["payload"]
    _scribble(returned)
    assert Fact.from_record(record).model_dump(mode="json")["payload"] == before


def _scribble(value: Any) -> None:
    """Change every dict and list inside ``value`` in place."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _scribble(item)
        value["scribbled"] = True
    elif isinstance(value, list):
        for item in value:
            _scribble(item)
        value.append("scribbled")
