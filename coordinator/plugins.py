"""Participants and decision logs from URLs, resolved through package entry points.

A participant backend registers a factory in the ``lockstep.participants`` entry-point
group under its URL scheme (``sqlite``, ``memory``, ...). The factory is called as
``factory(url, name=..., asynchronous=...)`` and returns a participant. So the CLI, the
recovery daemon and ``MemoryStore.open`` never import a backend by name, and a third-party
backend plugs in the same way as ours.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Literal, overload
from urllib.parse import parse_qs, unquote, urlsplit

from coordinator.abc import AsyncDecisionLog, AsyncParticipant, DecisionLog, Participant
from coordinator.errors import ConfigurationError

PARTICIPANTS_GROUP = "lockstep.participants"
LOGS_GROUP = "lockstep.logs"

ParticipantFactory = Callable[..., Participant | AsyncParticipant]


def scheme_of(url: str) -> str:
    """The URL's scheme (``sqlite``, ``qdrant+local``, ...), or raise ConfigurationError."""
    if "://" not in url:
        raise ConfigurationError(
            f"{url!r} is not a store URL; expected scheme://..., e.g. sqlite:///agent.db"
        )
    return url.split("://", 1)[0].lower()


def path_of(url: str) -> str:
    """The filesystem path a file-based store's URL names, read as SQLAlchemy reads
    ``sqlite://`` URLs: after ``scheme://`` comes an empty host, then ``/``, then the path.

    ``sqlite:///agent.db`` is ``agent.db`` in the working directory, ``sqlite:////var/lib/
    agent.db`` (four slashes) the absolute ``/var/lib/agent.db``, ``sqlite:///~/agent.db``
    one in the home directory; ``sqlite://agent.db`` (no host part) is relative too.

    :raises ConfigurationError: the URL names no path; or it names a relative path that
        does not exist while the same path from the root does. Version 0.1.0 read three
        slashes as the root's path, so rather than open a new, empty store there, the
        caller is told which URL names the existing one.
    """
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    three_slashes = not parts.netloc and path.startswith("/")
    if three_slashes and path.startswith("//"):
        return path[1:]  # four slashes: absolute
    relative = path[1:] if three_slashes else path
    if not relative:
        raise ConfigurationError(f"{url!r} names no path")
    resolved = os.path.expanduser(relative)
    rooted = "/" + relative
    moved = three_slashes and not os.path.isabs(resolved)  # 0.1.0 read it from the root
    if moved and not os.path.exists(resolved) and os.path.exists(rooted):
        scheme, query = scheme_of(url), f"?{parts.query}" if parts.query else ""
        raise ConfigurationError(
            f"{url!r} names {resolved!r} in the working directory ({os.getcwd()}), which "
            f"does not exist, while {rooted!r} does. Three slashes name a relative path: "
            f"write {scheme}:///{rooted}{query} (four slashes) for {rooted!r}, or "
            f"{scheme}:///{os.path.abspath(resolved)}{query} for a new store in the "
            "working directory"
        )
    return resolved


def query_flag(url: str, name: str, default: bool = True) -> bool:
    """A yes/no option from a URL's query (``0``, ``false`` and ``no`` mean off)."""
    values = parse_qs(urlsplit(url).query).get(name)
    return default if not values else values[-1].lower() not in ("0", "false", "no")


def available_schemes() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=PARTICIPANTS_GROUP))


@overload
def open_participant(
    url: str,
    *,
    name: str | None = None,
    asynchronous: Literal[False] = False,
    **options: Any,
) -> Participant: ...


@overload
def open_participant(
    url: str, *, name: str | None = None, asynchronous: Literal[True], **options: Any
) -> AsyncParticipant: ...


def open_participant(
    url: str, *, name: str | None = None, asynchronous: bool = False, **options: Any
) -> Participant | AsyncParticipant:
    """Open the participant a URL names, through its backend's entry point.

    ``options`` go to the backend's factory (``embedder=`` for indexes).

    :raises ConfigurationError: unknown scheme (the message lists the installed ones), or
        a backend whose extra is not installed.
    """
    scheme = scheme_of(url)
    found = [ep for ep in entry_points(group=PARTICIPANTS_GROUP) if ep.name == scheme]
    if not found:
        raise ConfigurationError(
            f"no participant backend for {scheme}:// (installed: {', '.join(available_schemes())})"
        )
    try:
        factory: ParticipantFactory = found[0].load()
        # Backends import their client library when called, so a missing one shows here too.
        return factory(url, name=name, asynchronous=asynchronous, **options)
    except ModuleNotFoundError as exc:
        module = found[0].value.split(":")[0]
        extra = module.split(".")[1] if module.startswith("participants.") else None
        how = f"pip install 'lockstep[{extra}]'" if extra else f"install what {module} needs"
        raise ConfigurationError(
            f"the {scheme}:// backend is not installed ({exc}); {how}"
        ) from exc


def open_decision_log(url: str, *, asynchronous: bool = False) -> DecisionLog | AsyncDecisionLog:
    """Open a decision log: ``sqlite:///path/decisions.db`` (``?group_commit=0`` turns
    group commit off), ``memory://``, or a backend's (``postgresql://...`` with the
    postgres extra), found through entry points."""
    from coordinator.log import (
        AsyncDecisionLogAdapter,
        MemoryDecisionLog,
        SQLiteDecisionLog,
    )

    scheme = scheme_of(url)
    log: DecisionLog
    found = [ep for ep in entry_points(group=LOGS_GROUP) if ep.name == scheme]
    if scheme == "sqlite":
        log = SQLiteDecisionLog(path_of(url), group_commit=query_flag(url, "group_commit"))
    elif scheme == "memory":
        log = MemoryDecisionLog()
    elif found:
        try:
            log = found[0].load()(url)
        except ImportError as exc:
            raise ConfigurationError(
                f"the {scheme}:// decision log is not installed ({exc})"
            ) from exc
    else:
        known = ["sqlite", "memory", *sorted(ep.name for ep in entry_points(group=LOGS_GROUP))]
        raise ConfigurationError(f"no decision log for {scheme}:// (known: {', '.join(known)})")
    return AsyncDecisionLogAdapter(log) if asynchronous else log
