"""The ``lockstep`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import cast

from coordinator._sync.coordinator import Coordinator
from coordinator.abc import DecisionLog, Participant
from coordinator.errors import LockstepError
from coordinator.faults import hook_from_environment
from coordinator.plugins import open_decision_log, open_participant
from coordinator.policy import Policy


def _recover(args: argparse.Namespace) -> int:
    participants: list[Participant] = []
    for spec in args.store:
        name, _, url = spec.partition("=")
        if not url:
            raise SystemExit(f"--store takes NAME=URL, got {spec!r}")
        participants.append(open_participant(url, name=name))
    log = cast(DecisionLog, open_decision_log(args.log))
    policy = Policy(in_doubt_timeout=args.in_doubt_timeout)
    report = Coordinator(
        participants, log, policy=policy, fault_hook=hook_from_environment()
    ).recover()
    summary = {
        "committed": [list(b) for b in report.committed],
        "aborted": [list(b) for b in report.aborted],
        "fenced": list(report.fenced),
        "waiting": list(report.waiting),
        "failed": {k: str(v) for k, v in report.failed.items()},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"committed {len(report.committed)} branches, aborted {len(report.aborted)}, "
            f"fenced {len(report.fenced)}, waiting {len(report.waiting)}, "
            f"failed {len(report.failed)}"
        )
        for key, err in report.failed.items():
            print(f"  failed {key}: {err}")
    return 0 if report.clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lockstep", description="Atomic memory commits across an agent's stores."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="inject failures and crashes; compare unsynchronised writes with Lockstep"
    )
    demo.add_argument("--runs", type=int, default=12, help="runs per approach (default 12)")
    demo.add_argument("--writes", type=int, default=30, help="memory writes per run")
    demo.add_argument("--fail-rate", type=float, default=0.1, help="index failure rate")
    demo.add_argument("--json", action="store_true", help="print the table as JSON")

    recover = commands.add_parser("recover", help="resolve in-doubt transactions once")
    recover.add_argument(
        "--store", action="append", default=[], metavar="NAME=URL", help="a participant"
    )
    recover.add_argument("--log", required=True, metavar="URL", help="the decision log")
    recover.add_argument("--in-doubt-timeout", type=float, default=Policy().in_doubt_timeout)
    recover.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from coordinator._demo import demo as run_demo

            return run_demo(args.runs, args.writes, args.fail_rate, args.json)
        return _recover(args)
    except LockstepError as err:
        print(f"lockstep: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
