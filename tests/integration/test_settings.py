"""Stores from URLs and settings: lockstep.toml, LOCKSTEP_* variables, bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import chromadb
import pytest

from coordinator import ConfigurationError, Fact, MemoryStore
from coordinator.embeddings import HashingEmbedder
from coordinator.plugins import open_participant
from coordinator.settings import LockstepSettings


def test_a_toml_file_describes_storage_index_log_and_embedder(tmp_path: Path) -> None:
    config = tmp_path / "lockstep.toml"
    config.write_text(
        f'storage = "sqlite:///{tmp_path}/facts.db"\n'
        f'indexes = ["chroma+local:///{tmp_path}/chroma?collection=notes&text_field=content"]\n'
        f'log = "sqlite:///{tmp_path}/decisions.db"\n'
        'embedder = "hashing:32"\n'
        "in_doubt_timeout = 5.0\n"
    )
    settings = LockstepSettings.from_file(str(config))
    mem = MemoryStore.from_settings(settings)
    fid = mem.commit(Fact(type="note", payload={"content": "from a config file"}))
    assert mem.policy.in_doubt_timeout == 5.0
    assert [i.name for i in mem.indexes] == ["chroma:notes"]
    assert mem.indexes[0].contents().committed == {fid: 1}
    assert (tmp_path / "decisions.db").exists()
    mem.close()


def test_deferred_finish_is_a_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKSTEP_PATH", str(tmp_path / "memory"))
    monkeypatch.setenv("LOCKSTEP_EMBEDDER", "hashing:16")
    monkeypatch.setenv("LOCKSTEP_DEFERRED_FINISH", "true")
    mem = MemoryStore.from_settings(LockstepSettings())
    fid = mem.commit(Fact(type="note", payload={"content": "queued index work"}))
    assert mem.policy.deferred_finish
    assert mem.indexes[0].contents().committed == {}  # staged until the batch
    assert [r.fact["id"] for r in mem.search("queued index work", k=1)] == [fid]
    mem.close()  # finishes the batch
    again = MemoryStore.from_settings(LockstepSettings())
    assert again.indexes[0].contents().committed == {fid: 1}
    again.close()


def test_environment_variables_override_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKSTEP_PATH", str(tmp_path / "memory"))
    monkeypatch.setenv("LOCKSTEP_EMBEDDER", "hashing:16")
    mem = MemoryStore.from_settings(LockstepSettings())
    mem.commit(Fact(type="note", payload={"content": "embedded default via env"}))
    assert mem.indexes[0].embedder.dim == 16
    assert (tmp_path / "memory" / "facts.db").exists()
    mem.close()


def test_relative_urls_and_directories_name_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite:///agent.db`` is ./agent.db (as in the getting-started guide and SQLAlchemy),
    for a program, the CLI and ``MemoryStore.open`` alike."""
    monkeypatch.chdir(tmp_path)
    Path("lockstep.toml").write_text(
        'storage = "sqlite:///agent.db"\n'
        'indexes = ["chroma+local:///vectors?collection=notes&text_field=content"]\n'
        'embedder = "hashing:32"\n'
    )
    mem = MemoryStore.from_settings(LockstepSettings.from_file("lockstep.toml"))
    fid = mem.commit(Fact(type="note", payload={"content": "kept where the config says"}))
    mem.close()
    assert (tmp_path / "agent.db").is_file() and (tmp_path / "vectors").is_dir()
    checked = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "--config", "lockstep.toml", "verify", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["facts"] == 1

    embedded = MemoryStore.open("memory/", embedder=HashingEmbedder(16))
    other = embedded.commit(Fact(type="note", payload={"content": "in ./memory"}))
    embedded.close()
    assert (tmp_path / "memory" / "facts.db").is_file()
    again = MemoryStore.open("memory", embedder=HashingEmbedder(16))
    assert again.get(other) is not None and again.get(fid) is None
    again.close()


def test_a_relative_chroma_url_opened_again_elsewhere_writes_where_it_now_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chroma+local:///vectors`` is ./vectors when it is opened. Chroma keeps one client
    per path string in a process: a program that opened it in one directory, then in
    another, wrote the second store's vectors into the first one's."""
    first, second = tmp_path / "first", tmp_path / "second"
    for directory in (first, second):
        directory.mkdir()
        monkeypatch.chdir(directory)
        mem = MemoryStore.from_settings(
            LockstepSettings(
                storage="sqlite:///agent.db",
                indexes=["chroma+local:///vectors?collection=notes"],
                embedder="hashing:16",
            )
        )
        mem.commit(Fact(id=directory.name, type="note", payload={"content": directory.name}))
        mem.close()
    for directory in (first, second):
        held = chromadb.PersistentClient(str(directory / "vectors")).get_collection("notes")
        metadatas = held.get(include=["metadatas"])["metadatas"] or []
        assert {m["fact_id"] for m in metadatas} == {directory.name}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"storage": "nosuch:///x"}, "no participant backend for nosuch://"),
        ({"storage": "sqlite:///x.db", "indexes": ["sqlite:///y.db"]}, "is not a vector index"),
        ({"embedder": "word2vec"}, "embedder 'word2vec' is unknown"),
        ({"mirrors": ["redis://127.0.0.1:1/0"]}, "no storage"),
        ({"path": "memory", "storage": "sqlite:///x.db"}, "both `path` \\(memory"),
        ({"storage": "sqlite:///x.db", "log": "chroma+local:///x"}, "no decision log for chroma"),
    ],
)
def test_bad_settings_get_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, object], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=message):
        MemoryStore.from_settings(LockstepSettings(**settings))  # type: ignore[arg-type]


def test_unknown_setting_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="storag"):
        LockstepSettings(storag="sqlite:///x.db")  # type: ignore[call-arg]


@pytest.mark.parametrize("scheme", ["qdrant+memory", "chroma+memory"])
def test_an_index_url_may_name_its_embedder(scheme: str) -> None:
    """So the CLI and the daemon can open an index that was made with a given embedder."""

    index = open_participant(f"{scheme}://?collection=e{scheme[0]}&embedder=hashing:24")
    assert index.embedder.dim == 24  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="embedder 'bogus' is unknown"):
        open_participant(f"{scheme}://?collection=x&embedder=bogus")


def test_an_unreachable_chroma_server_is_a_participant_error_naming_it() -> None:
    from chaos.servers import free_port
    from coordinator import ParticipantError

    port = free_port()  # nothing listens there
    with pytest.raises(
        ParticipantError, match=f"cannot reach the Chroma server at 127.0.0.1:{port}"
    ):
        open_participant(f"chroma+http://127.0.0.1:{port}?collection=notes&embedder=hashing:8")


@pytest.mark.parametrize(
    ("url", "missing", "extra"),
    [
        ("chroma+local:///vectors?collection=notes", "chromadb", "chroma"),  # imported lazily
        ("postgresql://postgres@127.0.0.1:1/db", "participants.postgres", "postgres"),
        ("qdrant+local:///vectors", "qdrant_client", "qdrant"),
    ],
)
def test_a_backend_whose_extra_is_missing_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, missing: str, extra: str
) -> None:

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    with pytest.raises(ConfigurationError, match=rf"pip install 'lockstep\[{extra}\]'"):
        open_participant(url)


@pytest.mark.parametrize("where", ["embedded", "server"])
def test_a_collection_name_chroma_refuses_stops_the_open(
    tmp_path: Path, request: pytest.FixtureRequest, where: str
) -> None:
    """Before, the store opened and every commit was a VoteRejected (which reads as
    retryable) wrapping Chroma's validation error."""
    if where == "server":
        server = request.getfixturevalue("chroma_server")
        index = f"chroma+http://127.0.0.1:{server.port}?collection=m"
    else:
        index = f"chroma+local:///{tmp_path}/chroma?collection=m"
    settings = LockstepSettings(
        storage=f"sqlite:///{tmp_path}/facts.db", indexes=[index], embedder="hashing:8"
    )
    with pytest.raises(ConfigurationError, match="Chroma refused the collection name 'm'"):
        MemoryStore.from_settings(settings)


@pytest.mark.parametrize("index", ["qdrant+local:///{d}/vectors", "chroma+local:///{d}/chroma"])
def test_an_index_of_another_dimension_stops_the_open_and_releases_the_stores(
    tmp_path: Path, index: str
) -> None:
    def settings(dim: int) -> LockstepSettings:
        return LockstepSettings(
            storage=f"sqlite:///{tmp_path}/facts.db",
            indexes=[index.format(d=tmp_path) + "?collection=notes"],
            embedder=f"hashing:{dim}",
        )

    with MemoryStore.from_settings(settings(16)) as mem:
        fid = mem.commit(Fact(type="note", payload={"content": "kept"}))
    with pytest.raises(
        ConfigurationError, match="holds 16-dimensional vectors; the embedder makes 8"
    ) as refused:
        MemoryStore.from_settings(settings(8))
    # Closed on the way out, not left to the garbage collector: while the error is kept
    # (its traceback holds the store), Qdrant's local mode would refuse a second client.
    with MemoryStore.from_settings(settings(16)) as mem:
        assert mem.get(fid)["payload"] == {"content": "kept"}  # type: ignore[index]
        assert mem.indexes[0].contents().committed == {fid: 1}
    assert refused.value.participant is not None


def test_the_embedded_default_refuses_an_embedder_of_another_dimension_at_open(
    tmp_path: Path,
) -> None:
    with MemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(16)) as mem:
        fid = mem.commit(Fact(type="note", payload={"content": "kept"}))
    with pytest.raises(ConfigurationError, match="the embedder makes 8"):
        MemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(8))
    with MemoryStore.open(tmp_path / "m", embedder=HashingEmbedder(16)) as mem:
        assert mem.get(fid)["payload"] == {"content": "kept"}  # type: ignore[index]


def test_a_decision_naming_a_store_no_longer_configured_opens_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The configured stores' branches are settled; what the pass cannot settle is told to
    the operator rather than kept in a report nobody reads."""
    from coordinator.abc import Decision
    from coordinator.ids import new_txid
    from coordinator.log import SQLiteDecisionLog
    from coordinator.records import FactRecord, UpsertFact
    from participants.sqlite import SQLiteStorage

    storage = SQLiteStorage(tmp_path / "facts.db", name="facts")
    txid = new_txid()
    storage.prepare(txid, [UpsertFact(FactRecord("a", "note", {"content": "x"}, 1), 0)])
    storage.close()
    log = SQLiteDecisionLog(tmp_path / "log.db")
    log.decide(txid, Decision.COMMIT, ["facts", "removed-index"])
    log.close()
    settings = LockstepSettings(
        storage=f"sqlite:///{tmp_path}/facts.db", log=f"sqlite:///{tmp_path}/log.db"
    )
    with (
        caplog.at_level("WARNING", logger="coordinator"),
        MemoryStore.from_settings(settings) as mem,
    ):
        assert mem.get("a")["payload"] == {"content": "x"}  # type: ignore[index]
    assert f"recovery on open left 1 unsettled: {txid}" in caplog.text
    assert "participants not configured here: ['removed-index']" in caplog.text
