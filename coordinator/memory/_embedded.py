"""The embedded default's directory: which vector engine it keeps its memories' points in.

::

    <dir>/facts.db    SQLite: the facts, the transaction log, the decisions
    <dir>/vectors/    Qdrant local mode (``index="qdrant+local"``, the default), or
    <dir>/edge/       Qdrant Edge (``index="qdrant+edge"``, the ``qdrant-edge`` extra)

A directory keeps the engine it was made with: opened without ``index`` it uses the one
it holds; naming the other is refused, since every memory's vector is in the first.
"""

from __future__ import annotations

from pathlib import Path

from coordinator.errors import ConfigurationError, UsageError
from coordinator.settings import ENGINES


def engine_for(directory: Path, asked: str | None) -> str:
    """The engine to open ``directory`` with: ``asked``, or the one the directory holds.

    :raises UsageError: ``asked`` is not one of :data:`coordinator.settings.ENGINES`.
    :raises ConfigurationError: the directory holds the other engine's points (or both
        engines' and nothing was asked).
    """
    if asked is not None and asked not in ENGINES:
        raise UsageError(
            f"index={asked!r}: the embedded default's index is one of {sorted(ENGINES)}"
        )
    held = [name for name, sub in ENGINES.items() if (directory / sub).exists()]
    if asked is None:
        if len(held) > 1:
            raise ConfigurationError(
                f"{directory} holds points of both {held[0]} and {held[1]}; name the one "
                f"to use with index= (embedded_index in the settings)"
            )
        return held[0] if held else next(iter(ENGINES))  # the first is the default
    if held and asked not in held:
        other = held[0]
        raise ConfigurationError(
            f"{directory} keeps its memories' vectors in {other} "
            f"({directory / ENGINES[other]}), not {asked}: open it without index= to use "
            f"them. To move to {asked}, move that directory aside, open with "
            f"index={asked!r} and call repair() (or run `lockstep verify --repair` with "
            f"embedded_index = {asked!r} in the settings): every memory is written into "
            "the new index from the facts"
        )
    return asked
