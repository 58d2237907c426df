"""The paths file-based store URLs name: ``sqlite:///agent.db`` relative, four slashes
absolute (SQLAlchemy's reading), and no silent switch to a new store where version 0.1.0
read three slashes as the root's path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coordinator.errors import ConfigurationError
from coordinator.plugins import path_of


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///agent.db", "agent.db"),
        ("sqlite:///data/agent.db?group_commit=0", "data/agent.db"),
        ("sqlite:////var/lib/agent.db", "/var/lib/agent.db"),
        ("sqlite://agent.db", "agent.db"),
        ("sqlite://data/agent.db", "data/agent.db"),
        ("qdrant+local:///vectors", "vectors"),
        ("chroma+local:////srv/vectors", "/srv/vectors"),
        ("sqlite:///my%20memory.db", "my memory.db"),
        ("sqlite:///~/agent.db", os.path.expanduser("~/agent.db")),
    ],
)
def test_three_slashes_name_a_relative_path_and_four_an_absolute_one(url: str, path: str) -> None:
    assert path_of(url) == path


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://"])
def test_a_url_without_a_path_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="names no path"):
        path_of(url)


def test_a_missing_relative_path_whose_rooted_twin_exists_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    existing = tmp_path / "old" / "agent.db"
    existing.parent.mkdir()
    existing.write_bytes(b"")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    old_style = f"sqlite:///{str(existing).lstrip('/')}?group_commit=0"  # 0.1.0: the root's
    with pytest.raises(ConfigurationError) as refused:
        path_of(old_style)
    message = str(refused.value)
    assert f"sqlite:////{str(existing).lstrip('/')}?group_commit=0 (four slashes)" in message
    assert f"sqlite:///{work}/" in message  # the URL of a new store here, spelled whole
    assert list(work.iterdir()) == []
    # Once the relative path exists, it is the one named.
    relative = work / str(existing).lstrip("/")
    relative.parent.mkdir(parents=True)
    relative.write_bytes(b"")
    assert path_of(old_style) == str(existing).lstrip("/")
    # Without the third slash the path was relative in 0.1.0 too: no question to ask.
    relative.unlink()
    assert path_of(f"sqlite://{str(existing).lstrip('/')}") == str(existing).lstrip("/")


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("redis://h:6379/0", "redis://h", True),
        ("redis://H:6379/0?prefix=a:", "redis://h:6379", True),
        ("redis://user:secret@h/0", "redis://h", True),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock", True),
        ("redis://h:6379/0", "redis://h:6379/1", False),
        ("redis://h:6379", "redis://h:6380", False),
        ("redis://h", "redis://g", False),
        ("unix:///run/redis.sock", "unix:///run/other.sock", False),
    ],
)
def test_redis_urls_name_a_server_and_database_whatever_the_spelling(
    one: str, other: str, same: bool
) -> None:
    """The CLI refuses a log other than the one a Redis store keeps (recovery would abort
    its committed work): a URL spelling the same server differently is not another."""
    from participants.redis._log import server_of

    assert (server_of(one) == server_of(other)) is same


def test_a_redis_url_redis_cannot_read_names_no_server() -> None:
    from participants.redis._log import server_of

    assert server_of("redis://h:notaport") is None
