"""The Python examples of the README, the getting-started guide and the engine page, run
as written.

Each example is read from the Markdown at test time (found by a line it holds), so an
example that stops working fails here. The guide's examples are fragments that go on from
one another, as a reader follows them; what a fragment takes from the reader's own code
(``old_id``, a LangGraph ``builder``, a ``storage`` and an ``index``, the imports of a
section) is given beside it, and the hosts of the three-store example are this suite's
private servers. After each example the test checks what the stores really hold. The
embedder is the one the examples get: the offline e5 model.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Annotated, Any, TypedDict

import chromadb
import pytest
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from qdrant_client import QdrantClient

from chaos.servers import ChromaServer, RedisServer
from coordinator import Fact, MemoryStore
from participants._vectors import COMMITTED
from participants.qdrant import QdrantIndex
from participants.sqlite import SQLiteStorage
from tests.support.sqlite import rows

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "getting-started.md"
ENGINE = ROOT / "docs" / "engine.md"


def example(doc: Path, holding: str, language: str = "python") -> str:
    """The one ``language`` code block of ``doc`` that holds the line ``holding``."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```", doc.read_text(), re.MULTILINE | re.DOTALL)
    found = [block for block in blocks if holding in block.splitlines()]
    assert len(found) == 1, f"{doc.name}: {len(found)} {language} blocks hold {holding!r}"
    return str(found[0])


def run(code: str, names: dict[str, Any] | None = None, where: str = "<docs>") -> dict[str, Any]:
    """Run ``code`` in ``names`` (a fresh namespace by default); return the namespace."""
    names = {} if names is None else names
    exec(compile(code, where, "exec"), names)  # noqa: S102 - the documentation's own code
    return names


async def run_awaiting(doc: Path, holding: str, names: dict[str, Any]) -> dict[str, Any]:
    """Run the example of ``doc`` that holds ``holding``, which awaits at its top level as
    in an async function's body (or a notebook); return the namespace."""
    where = f"{doc.name}: {holding.strip()}"
    code = compile(example(doc, holding), where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    awaiting = eval(code, names)
    if awaiting is not None:
        await awaiting
    return names


def run_example(doc: Path, holding: str, names: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the example of ``doc`` that holds the line ``holding`` (see :func:`example`)."""
    return run(example(doc, holding), names, f"{doc.name}: {holding.strip()}")


@pytest.fixture(autouse=True)
def in_a_fresh_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples name relative paths (``agent-memory/``, ``agent.db``)."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("LOCKSTEP_")]:
        monkeypatch.delenv(name)


def test_the_readme_quick_start_commits_then_undoes_in_both_stores() -> None:
    ns = run_example(
        README, 'mem = MemoryStore.open("agent-memory/")  # embedded default; recovery runs on open'
    )
    mem, fid = ns["mem"], ns["fid"]
    assert mem.get(fid) is None  # rollback(1) undid the commit, as a new transaction
    assert [v["deleted"] for v in mem.history(fid)] == [False, True]
    assert fid not in [hit.fact["id"] for hit in mem.search("what does the user eat?", k=3)]
    assert mem.verify().clean
    mem.close()


def test_the_readmes_coordinator_example_commits_in_both_participants() -> None:
    ns = run_example(
        README, 'coord = Coordinator([facts, mirror], SQLiteDecisionLog("decisions.db"))'
    )
    assert set(ns["outcome"].participants) == {"facts", "mirror"}
    for store in (ns["facts"], ns["mirror"]):
        record, newest = store.head("pref-1")
        assert (record.payload, record.version, newest) == ({"content": "vegetarian"}, 1, 1)
    ns["coord"].close()


def test_the_engine_pages_commit_lands_in_both_sqlite_files() -> None:
    ns = run_example(ENGINE, 'index = SQLiteStorage("index.db", name="index")')
    assert set(ns["outcome"].participants) == {"facts", "index"}
    ns["coord"].close()
    for path, name in (("agent.db", "facts"), ("index.db", "index")):
        store = SQLiteStorage(path, name=name)
        record, newest = store.head("pref-1")
        assert record is not None
        assert (record.payload, record.version, newest) == ({"content": "vegan"}, 1, 1)
        assert store.recover() == []
        store.close()


def test_the_guide_followed_from_the_quick_start_to_your_own_sql() -> None:
    ns = run_example(
        GUIDE, 'mem = MemoryStore.open("agent-memory/")  # facts.db (facts and decisions), vectors/'
    )
    fid = ns["fid"]
    mem = ns["mem"] = MemoryStore.open("agent-memory/")  # the quick start closed it
    assert (mem.get(fid) or {}).get("payload") == {"content": "The user is vegetarian"}
    assert [v["payload"]["content"] for v in mem.history(fid)] == [
        "The user is vegetarian",
        "The user is vegan",
        "The user is vegetarian",
    ]
    assert mem.search("what does the user eat?", k=1)[0].fact["id"] == fid

    run_example(GUIDE, "class UserPref(BaseModel):", ns)
    prefs = mem.query(typename="preference")
    assert [p["payload"] for p in prefs] == [{"content": "vegan", "role": "diet"}]
    assert prefs[0]["version"] == 2  # the singleton key made the second commit an update

    ns["old_id"] = fid  # the reader's own fact to delete
    run_example(GUIDE, "    tx.delete(old_id)", ns)
    assert mem.get(fid) is None
    drinks = mem.query(typename="preference", filters={"payload.role": "drink"})
    assert [d["payload"]["content"] for d in drinks] == ["tea"]

    run_example(
        GUIDE, '    tx.execute("facts", "INSERT INTO orders (item) VALUES (?)", ["lamp"])', ns
    )
    assert [n["payload"] for n in mem.query(typename="note")] == [{"content": "ordered a lamp"}]
    assert mem.verify().clean
    mem.close()
    assert rows("agent-memory/facts.db", "SELECT id, item FROM orders") == [(1, "lamp")]


def test_the_guides_stores_from_objects_then_from_its_settings_file() -> None:
    ns = run_example(GUIDE, 'mem = MemoryStore(SQLiteStorage("agent.db"))')
    mem = ns["mem"]
    fid = mem.commit(Fact(type="preference", payload={"content": "green tea", "role": "drink"}))
    mem.close()

    settings = example(GUIDE, 'storage = "sqlite:///agent.db"', language="toml")
    Path("lockstep.toml").write_text(settings)
    mem = run_example(GUIDE, "mem = MemoryStore.from_settings()", ns)["mem"]
    assert mem.get(fid)["payload"] == {"content": "green tea", "role": "drink"}
    assert mem.search("a hot drink", k=1)[0].fact["id"] == fid  # the same collection
    assert mem.verify().clean
    mem.close()


def test_the_guides_three_stores_on_private_servers(
    postgres_dsn: str, redis_server: RedisServer, chroma_server: ChromaServer
) -> None:
    code = example(
        GUIDE, '    mirrors=[RedisStorage("redis://cache:6379/0", name="cache", prefix="agent:")],'
    )
    for theirs, ours in (
        ("postgresql://app@db/agent", postgres_dsn),
        ('http_client("vectors", 8000)', f'http_client("127.0.0.1", {chroma_server.port})'),
        ("redis://cache:6379/0", redis_server.url),
    ):
        assert theirs in code
        code = code.replace(theirs, ours)
    prelude = (
        "from coordinator import MemoryStore\n"
        "from participants.chroma import ChromaIndex, http_client\n"
        "from participants.postgres import PostgresStorage\n"
        "from participants.redis import RedisStorage\n"
    )
    server = chromadb.HttpClient(host="127.0.0.1", port=chroma_server.port)
    if "agent_memory" in [c.name for c in server.list_collections()]:
        server.delete_collection("agent_memory")  # the server is shared: start afresh
    mem = run(prelude + code)["mem"]
    fid = mem.commit(Fact(type="note", payload={"content": "The user lives in Lyon"}))
    cache = mem.mirrors[0]
    record, _ = cache.head(fid)
    assert record is not None and record.payload == {"content": "The user lives in Lyon"}
    assert mem.search("where does the user live?", k=1)[0].fact["id"] == fid
    assert mem.verify().clean
    mem.close()
    server.delete_collection("agent_memory")


def test_the_guides_deferred_finishing() -> None:
    client = QdrantClient(path="vectors")  # the reader's own client: closing it is theirs
    ns = {
        "storage": SQLiteStorage("agent.db"),
        "index": QdrantIndex(client, "agent_memory", "content"),
    }
    mem = run_example(GUIDE, "from coordinator import MemoryStore, Policy", ns)["mem"]
    fid = mem.commit(Fact(type="note", payload={"content": "The user is vegetarian"}))
    mem.update(fid, {"payload": {"content": "The user is vegan"}})
    hits = mem.search("what does the user eat?", k=3)
    assert [(h.fact["id"], h.fact["version"]) for h in hits] == [(fid, 2)]
    mem.close()  # runs the deferred batch: the point marked, the version it replaced gone
    points, _ = client.scroll("agent_memory", limit=100, with_payload=True)
    assert [(p.payload or {}).get("fact_id") for p in points] == [fid]
    assert (points[0].payload or {}).get("version") == 2  # the version it replaced is gone
    assert (points[0].payload or {}).get("state") == COMMITTED
    client.close()


class Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def a_builder() -> Any:
    """The reader's StateGraph: one node that answers."""
    builder = StateGraph(Chat)
    builder.add_node("reply", lambda state: {"messages": [AIMessage(content="hello there")]})
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder


def test_the_guides_langgraph_checkpoints_and_long_term_store() -> None:
    ns = run_example(
        GUIDE,
        "from coordinator.integrations.langgraph import LockstepSaver",
        {"builder": a_builder()},
    )
    config = {"configurable": {"thread_id": "chat-1"}}
    mem = ns["mem"]
    state = ns["graph"].get_state(config)
    assert [(type(m), m.content) for m in state.values["messages"]] == [
        (HumanMessage, "hi"),
        (AIMessage, "hello there"),
    ]
    saved = [f for f in mem.query() if f["session_id"] == "lockstep:langgraph:chat-1"]
    assert saved and all(f["type"].startswith("lockstep:") for f in saved)
    assert mem.verify().clean  # the checkpoints are not in the index, and it agrees

    ns = run_example(
        GUIDE, "from coordinator.integrations.langgraph import LockstepSaver, LockstepStore", ns
    )
    store = ns["graph"].store
    store.put(("memories", "ana"), "diet", {"text": "Ana is vegetarian"})
    found = store.search(("memories", "ana"), query="what does Ana eat?", limit=1)
    assert [(i.key, i.value) for i in found] == [("diet", {"text": "Ana is vegetarian"})]
    assert mem.verify().clean
    mem.close()


def test_the_guides_langchain_vector_store() -> None:
    ns = run_example(
        GUIDE, 'docs = LockstepVectorStore(mem)  # documents are facts of type "document"'
    )
    hits = ns["docs"].similarity_search("French cities", k=3, filter={"source": "atlas"})
    assert [(d.id, d.page_content, d.metadata) for d in hits] == [
        ("lyon", "Lyon is in France", {"source": "atlas"})
    ]
    assert [d.id for d in ns["retriever"].invoke("French cities")] == ["lyon"]
    assert ns["mem"].get("lyon") is not None
    assert ns["mem"].verify().clean
    ns["mem"].close()


@pytest.mark.anyio
async def test_the_guides_langchain_vector_store_on_an_async_store() -> None:
    from coordinator.integrations.langchain import LockstepVectorStore

    ns = await run_awaiting(
        GUIDE,
        "docs = LockstepVectorStore(amem)  # made inside the loop that uses amem",
        {"LockstepVectorStore": LockstepVectorStore},
    )
    hits = await ns["docs"].asimilarity_search("French cities", k=3)
    assert [(d.id, d.page_content) for d in hits] == [("lyon", "Lyon is in France")]
    assert (await ns["amem"].get("lyon"))["payload"]["content"] == "Lyon is in France"
    assert (await ns["amem"].verify()).clean
    await ns["amem"].close()
