"""The benchmarks refuse a misspelt name up front, naming the ones they know."""

from __future__ import annotations

import argparse

import pytest

from benchmarks._common import pick

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
