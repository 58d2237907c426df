"""Named fault points of the protocol, for crash tests and chaos runs.

The drivers call the fault hook at every point below (``{p}`` is a participant name).
A hook may raise (a simulated crash is a ``BaseException`` that is not an ``Exception``,
so nothing in the driver cleans up after it) or kill the process.

Commit: ``before_prepare:{p}``, ``after_prepare:{p}``, ``before_decision``,
``after_decision``, ``before_commit:{p}``, ``after_commit:{p}``, ``before_abort:{p}``,
``before_one_phase:{p}``, ``after_one_phase:{p}``, ``before_end`` (with a last resource,
``before_decision``/``after_decision`` surround its commit, and a last resource that
stages its transaction while the others prepare passes ``before_stage:{p}`` and
``after_stage:{p}`` meanwhile; a deferred-finishing batch passes recovery's
``recovery_before_resolve:{p}``/``recovery_after_resolve:{p}``).
Recovery: ``recovery_after_list``, ``recovery_after_decide``, ``recovery_before_resolve:{p}``,
``recovery_after_resolve:{p}``.

Setting ``LOCKSTEP_KILL_AT`` to a point name (``before_commit:*`` matches any participant)
makes :func:`hook_from_environment` SIGKILL the process when that point is reached, after
letting ``LOCKSTEP_KILL_SKIP`` (default 0) earlier matches pass.
"""

from __future__ import annotations

import fnmatch
import os
import signal
from collections.abc import Callable, Sequence

FaultHook = Callable[[str], None]


def no_faults(point: str) -> None:
    """The default hook: every point passes."""


def hook_from_environment() -> FaultHook:
    """The hook chaos runs use: ``LOCKSTEP_KILL_AT=<pattern>`` kills this process there."""
    pattern = os.environ.get("LOCKSTEP_KILL_AT")
    if not pattern:
        return no_faults
    skip = [int(os.environ.get("LOCKSTEP_KILL_SKIP", "0"))]

    def kill_at(point: str) -> None:
        if fnmatch.fnmatchcase(point, pattern):
            if skip[0] <= 0:
                os.kill(os.getpid(), signal.SIGKILL)
            skip[0] -= 1

    return kill_at


def commit_points(participants: Sequence[str]) -> list[str]:
    """Every point a two-phase commit over ``participants`` passes, in order."""
    return [
        *(f"before_prepare:{p}" for p in participants),
        *(f"after_prepare:{p}" for p in participants),
        "before_decision",
        "after_decision",
        *(f"before_commit:{p}" for p in participants),
        *(f"after_commit:{p}" for p in participants),
        "before_end",
    ]


def last_resource_points(
    participants: Sequence[str], last: str, *, staged: bool = False
) -> list[str]:
    """Every point a commit passes when ``last`` commits together with the decision (it
    neither prepares nor commits on its own: ``before_decision``/``after_decision``
    surround its local transaction; ``staged``: it stages that transaction while the
    others prepare, passing ``before_stage``/``after_stage``, which come before
    ``before_decision`` but in no fixed order with the others' prepare points)."""
    points = commit_points([p for p in participants if p != last])
    if staged:
        decision = points.index("before_decision")
        points[decision:decision] = [f"before_stage:{last}", f"after_stage:{last}"]
    return points


def recovery_points(participants: Sequence[str]) -> list[str]:
    """Every point a recovery pass over ``participants`` may pass."""
    return [
        "recovery_after_list",
        "recovery_after_decide",
        *(f"recovery_before_resolve:{p}" for p in participants),
        *(f"recovery_after_resolve:{p}" for p in participants),
    ]
