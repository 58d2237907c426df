"""The ``lockstep`` command line.

Stores come from ``--store NAME=URL`` / ``--log URL`` options, or else from
``--config lockstep.toml`` / ``LOCKSTEP_*`` variables (see :mod:`coordinator.settings`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, cast

from coordinator import daemon
from coordinator._sync.coordinator import Coordinator
from coordinator.abc import DecisionLog, Participant
from coordinator.errors import ConfigurationError, LockstepError
from coordinator.faults import hook_from_environment
from coordinator.ids import txid_time
from coordinator.memory import MemoryStore
from coordinator.outcomes import RecoveryReport
from coordinator.plugins import open_decision_log, open_participant, path_of, scheme_of
from coordinator.policy import Policy
from coordinator.settings import DEFAULT_PATH, FACTS_FILE, LockstepSettings

LeaseFactory = Callable[[], AbstractContextManager[daemon.Lease]]


def _settings(args: argparse.Namespace) -> LockstepSettings:
    """The settings file's (or ``lockstep.toml``'s) and ``LOCKSTEP_*`` variables' settings,
    with ``--path`` in place of their ``path``."""
    settings = LockstepSettings.from_file(args.config) if args.config else LockstepSettings()
    path = getattr(args, "path", None)
    if path is None:
        return settings
    if getattr(args, "store", None):
        raise ConfigurationError("--path names an embedded store; --store names stores by URL")
    if settings.storage is not None:
        raise ConfigurationError(
            f"--path {path} names an embedded store, but the settings name a `storage`; "
            "pass --config with other settings, or leave out --path"
        )
    return settings.model_copy(update={"path": path})


def _existing_store(settings: LockstepSettings, args: argparse.Namespace) -> MemoryStore:
    """The store the settings name, which must exist: run where there is none, a command
    would create an empty store and report it clean."""
    if settings.storage is None:
        facts: Path | None = Path(settings.path or DEFAULT_PATH) / FACTS_FILE
    elif scheme_of(settings.storage) == "sqlite":
        facts = Path(path_of(settings.storage))
    else:
        facts = None  # a server: opening it creates nothing
    if facts is not None and not facts.exists():
        if getattr(args, "path", None) is not None:
            named = "--path names it"
        elif settings.storage or settings.path:
            named = f"the settings' `{'storage' if settings.storage else 'path'}` names it"
        else:
            named = "the embedded default's, opened when no settings name a store"
        raise ConfigurationError(
            f"no store at {facts.absolute()} ({named}); run where the store is, or name it "
            "with --path DIR, in lockstep.toml, with --config or with LOCKSTEP_* variables"
        )
    return MemoryStore.from_settings(settings)


@contextmanager
def _opened(args: argparse.Namespace) -> Iterator[tuple[Coordinator, LeaseFactory | None]]:
    """A coordinator over the stores named on the command line or in the settings, and
    the daemon's lease on their decision log (when the log offers one); the stores and the
    log are closed at the end (a pool left open keeps its threads, and so the process,
    alive after the command is done)."""
    settings = _settings(args)
    timeout = args.in_doubt_timeout or settings.in_doubt_timeout
    if not args.store:
        store = _existing_store(settings, args)
        try:
            yield store.coordinator_with(in_doubt_timeout=timeout), _lease_of(store.log)
        finally:
            store.close()
        return
    if not args.log:
        raise SystemExit("--store needs --log URL (the decision log of those stores)")
    policy = Policy(in_doubt_timeout=timeout, prepare_timeout=settings.prepare_timeout)
    opened: list[Participant | DecisionLog] = []  # closed if a later one is refused
    try:
        for spec in args.store:
            name, _, url = spec.partition("=")
            if not url:
                raise SystemExit(f"--store takes NAME=URL, got {spec!r}")
            opened.append(open_participant(url, name=name))
            _refuse_foreign_log(opened[-1], args.log)
        participants = cast(list[Participant], list(opened))
        log = cast(DecisionLog, open_decision_log(args.log))
        opened.append(log)
        hook = hook_from_environment()
        coordinator = Coordinator(participants, log, policy=policy, fault_hook=hook)
    except BaseException:
        for each in opened:
            each.close()
        raise
    try:
        yield coordinator, _lease_of(log)
    finally:
        coordinator.close()


def _refuse_foreign_log(participant: object, url: str) -> None:
    """Refuse a log other than the one a storage keeps its decisions in (checked before
    the log is opened, so none is created): recovery would find no decision for its
    transactions and abort them (presumed abort)."""
    own = getattr(participant, "decision_log_for", None)
    wanted = None if own is None else own(url)
    if wanted is not None:
        name = getattr(participant, "name", "?")
        raise SystemExit(
            f"--log {url}: store {name!r} keeps its decisions in its own log; pass --log "
            f"{wanted} (recovery with another log would abort its committed work)"
        )


def _lease_of(log: object) -> LeaseFactory | None:
    """``log.lease`` (SQLite: a file lock; Postgres: an advisory lock), also through an
    adapter that wraps a log in ``.sync``."""
    for candidate in (log, getattr(log, "sync", None)):
        lease = getattr(candidate, "lease", None)
        if callable(lease):
            return cast(LeaseFactory, lease)
    return None


def _summary(report: RecoveryReport) -> dict[str, Any]:
    return {
        "committed": [list(b) for b in report.committed],
        "aborted": [list(b) for b in report.aborted],
        "fenced": list(report.fenced),
        "waiting": list(report.waiting),
        "failed": {k: str(v) for k, v in report.failed.items()},
    }


def _line(report: RecoveryReport) -> str:
    return (
        f"committed {len(report.committed)} branches, aborted {len(report.aborted)}, "
        f"fenced {len(report.fenced)}, waiting {len(report.waiting)}, "
        f"failed {len(report.failed)}"
    )


def _recover(args: argparse.Namespace) -> int:
    with _opened(args) as (coordinator, lease):
        return _recover_with(coordinator, lease, args)


def _recover_with(
    coordinator: Coordinator, lease: LeaseFactory | None, args: argparse.Namespace
) -> int:
    if not args.watch:
        report = coordinator.recover()
        if args.json:
            print(json.dumps(_summary(report), indent=2))
        else:
            print(_line(report))
            for key, err in report.failed.items():
                print(f"  failed {key}: {err}")
        return 0 if report.clean else 1

    stop = threading.Event()
    daemon.stop_on_signals(stop)

    def show(result: RecoveryReport | BaseException) -> None:
        stamp = time.strftime("%H:%M:%S")
        if isinstance(result, BaseException):
            print(f"{stamp} pass failed: {result}", flush=True)
        elif args.json:
            print(json.dumps({"at": stamp, **_summary(result)}), flush=True)
        else:
            print(f"{stamp} {_line(result)}", flush=True)

    def watch(lease: daemon.Lease | None) -> int:
        passes = daemon.run(
            coordinator.recover,
            interval=args.interval,
            stop=stop,
            on_pass=show,
            lease=lease,
            max_backoff=args.max_backoff,
        )
        print(f"stopped after {passes} passes", flush=True)
        return 0

    if lease is None:
        return watch(None)
    with lease() as held:
        if not held.held:
            print("another recovery daemon holds this log's lease; exiting", file=sys.stderr)
            return 3
        return watch(held)


def _verify(args: argparse.Namespace) -> int:
    store = _existing_store(_settings(args), args)
    try:
        report = store.repair() if args.repair else store.verify()
        if args.json:
            print(report.to_json())
        else:
            action = "repaired" if args.repair else "found"
            print(f"{report.facts} facts in the storage; {action} {report.drifted_facts} drifted")
            for name, drift in report.derived.items():
                print(
                    f"  {name}: missing {len(drift.missing)}, extra {len(drift.extra)}, "
                    f"stale {len(drift.stale)}, pending {len(drift.pending)}"
                )
            for name, txids in report.staged.items():
                if txids:
                    print(f"  {name}: {len(txids)} branches staged")
        if args.repair:
            return 0 if store.verify().clean else 1
        return 0 if report.clean else 1
    finally:
        store.close()


def _status(args: argparse.Namespace) -> int:
    with _opened(args) as (coordinator, _):
        return _status_of(coordinator, args)


def _status_of(coordinator: Coordinator, args: argparse.Namespace) -> int:
    now = time.time()
    in_doubt = {name: p.recover() for name, p in coordinator.participants.items()}
    oldest = min((txid_time(t) for ts in in_doubt.values() for t in ts), default=None)
    counts = {name: len(ts) for name, ts in in_doubt.items()}
    status: dict[str, Any] = {
        "unended_decisions": len(coordinator.log.unended()),
        "in_doubt": counts,
        "oldest_pending_seconds": None if oldest is None else round(now - oldest, 3),
    }
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"decisions not yet finished everywhere: {status['unended_decisions']}")
        for name, count in counts.items():
            print(f"  {name}: {count} branches in doubt")
        if oldest is not None:
            print(f"oldest pending branch: {status['oldest_pending_seconds']} s")
    return 0


def _serve_mcp(settings: LockstepSettings) -> int:
    """Open the store, serve it over stdio until the host closes the pipe, close it."""
    import asyncio

    from coordinator.integrations.mcp import memory_server
    from coordinator.memory import AsyncMemoryStore

    async def serve() -> None:
        store = await AsyncMemoryStore.from_settings(settings)
        try:
            await memory_server(store).run_stdio_async()
        finally:
            await store.close()

    asyncio.run(serve())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lockstep", description="Atomic memory commits across an agent's stores."
    )
    parser.add_argument("--config", metavar="FILE", help="settings file (lockstep.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    embedded = argparse.ArgumentParser(add_help=False)
    embedded.add_argument(
        "--path",
        metavar="DIR",
        help="the embedded store in DIR, as MemoryStore.open(DIR) made it (default: the "
        f"settings, else ./{DEFAULT_PATH})",
    )

    demo = commands.add_parser(
        "demo", help="inject failures and crashes; compare unsynchronised writes with Lockstep"
    )
    demo.add_argument("--runs", type=int, default=12, help="runs per approach (default 12)")
    demo.add_argument("--writes", type=int, default=30, help="memory writes per run")
    demo.add_argument("--fail-rate", type=float, default=0.1, help="vector failure rate")
    demo.add_argument("--json", action="store_true", help="print the table as JSON")

    for name, help_text in (
        ("recover", "resolve in-doubt transactions (once, or --watch as a daemon)"),
        ("status", "decision log, in-doubt branches per participant, oldest pending age"),
    ):
        sub = commands.add_parser(name, help=help_text, parents=[embedded])
        sub.add_argument(
            "--store",
            action="append",
            default=[],
            metavar="NAME=URL",
            help="a participant by its name and URL (repeat for each; default: the settings)",
        )
        sub.add_argument("--log", metavar="URL", help="the decision log of --store stores")
        sub.add_argument(
            "--in-doubt-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="age after which a branch with no decision is aborted (default: settings, 30)",
        )
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
        if name == "recover":
            sub.add_argument("--watch", action="store_true", help="run as a daemon")
            sub.add_argument("--interval", type=float, default=5.0, help="seconds between passes")
            sub.add_argument(
                "--max-backoff",
                type=float,
                default=60.0,
                help="longest wait after failed passes (seconds)",
            )

    commands.add_parser(
        "mcp",
        help="serve the store's memory as MCP tools over stdio (for an MCP host to launch)",
        parents=[embedded],
    )

    verify = commands.add_parser(
        "verify",
        help="compare every index and mirror with the storage (exit 1 on drift)",
        parents=[embedded],
    )
    verify.add_argument(
        "--repair", action="store_true", help="rebuild drifted index entries and mirror copies"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from coordinator._demo import demo as run_demo

            return run_demo(args.runs, args.writes, args.fail_rate, args.json)
        if args.command == "recover":
            return _recover(args)
        if args.command == "status":
            return _status(args)
        if args.command == "mcp":
            return _serve_mcp(_settings(args))
        return _verify(args)
    except LockstepError as err:
        print(f"lockstep: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
