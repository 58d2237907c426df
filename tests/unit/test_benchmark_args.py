"""The benchmarks refuse a misspelt name up front, naming the ones they know; systems take
turns as the benchmarks promise."""

from __future__ import annotations

import argparse

import pytest

from benchmarks._common import pick, take_turns

KNOWN = ["1 writer", "8 threads", "8 asyncio tasks"]


def test_names_are_split_on_commas_and_trimmed() -> None:
    parser = argparse.ArgumentParser()
    assert pick(parser, "--modes", " 8 threads ,1 writer,", KNOWN) == ["8 threads", "1 writer"]


@pytest.mark.parametrize(
    ("text", "said"),
    [("8 asyncio", "unknown '8 asyncio'"), (" , ", "nothing given")],
)
def test_an_unknown_or_empty_list_exits_naming_the_known_ones(
    text: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="commit_cost")
    with pytest.raises(SystemExit) as exited:
        pick(parser, "--modes", text, KNOWN)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"--modes: {said}" in err
    assert "'1 writer', '8 threads', '8 asyncio tasks'" in err


class _Recorder:
    """Stands in for a benchmark child: answers every command and keeps it."""

    def __init__(self, name: str, log: list[tuple[str, dict[str, object]]]) -> None:
        self.name, self.log = name, log

    def ask(self, command: dict[str, object]) -> dict[str, object]:
        self.log.append((self.name, command))
        return {"latencies": [], "seconds": 0.0, "cpu_seconds": 0.0}


def test_turns_split_each_share_rotate_the_first_system_and_flush_last() -> None:
    log: list[tuple[str, dict[str, object]]] = []
    running = {name: _Recorder(name, log) for name in ("a", "b", "c")}
    answers = list(take_turns(running, ["insert", "update"], 5, 2, 1))  # type: ignore[arg-type]
    assert len(answers) == len(log) == 2 * 3 * 3  # kinds x turns x systems
    for kind in ("insert", "update"):
        turns = [(name, c) for name, c in log if c["op"] == kind]
        assert [c["ops"] for _, c in turns] == [2] * 3 + [2] * 3 + [1] * 3
        assert [c["flush"] for _, c in turns] == [False] * 6 + [True] * 3
        # Round 1: turn 0 starts at b, turn 1 at c, turn 2 at a.
        assert [name for name, _ in turns] == list("bcacababc")
        for name in "abc":  # every system runs the whole share
            assert sum(c["ops"] for n, c in turns if n == name) == 5  # type: ignore[misc]


def test_percentiles_are_nearest_rank_in_milliseconds() -> None:
    from benchmarks._common import percentile_ms

    seconds = [0.004, 0.001, 0.003, 0.002]
    assert [percentile_ms(seconds, q) for q in (0.0, 0.5, 0.99)] == [1.0, 3.0, 4.0]
    assert percentile_ms([], 0.5) == 0.0
