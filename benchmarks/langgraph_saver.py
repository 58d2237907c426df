"""A LangGraph chat thread checkpointed by each saver: Lockstep's, LangGraph's own SQLite
saver, MemState's checkpointer, and LangGraph's in-memory saver (no durability: a floor).

Each saver runs in its own process over a fresh SQLite file (Lockstep: the embedded
default, ``synchronous=FULL``; LangGraph's ``SqliteSaver``: WAL with SQLite's default
``synchronous``; MemState 0.5.1: its ``SQLiteStorage``, ``synchronous=NORMAL``), and the
order of the savers turns round by round. The graph is one node that answers every user
message, so a turn is what the saver costs LangGraph: reading the thread's latest
checkpoint, three checkpoints and their pending writes (LangGraph's input, start and step
checkpoints). The thread grows by two messages a turn; the first and the last tenth of
the turns show whether a turn's cost grows with the thread. Then ``get_state`` (the latest
checkpoint) and the whole history.

    python -m benchmarks.langgraph_saver [--turns 300] [--rounds 2]
        [--savers lockstep,langgraph-sqlite,memstate,in-memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    ensure_memstate_env,
    machine,
    percentile_ms,
    pick,
    positive,
    run_child,
    serve_child,
)

SAVERS = ("lockstep", "langgraph-sqlite", "memstate", "in-memory")


def open_saver(name: str, directory: Path) -> tuple[Any, Any]:
    """The saver, and what closes its store."""
    if name == "lockstep":
        from coordinator import MemoryStore
        from coordinator.embeddings import HashingEmbedder
        from coordinator.integrations.langgraph import LockstepSaver

        mem = MemoryStore.open(directory / "memory", embedder=HashingEmbedder(16))
        return LockstepSaver(mem), mem.close
    if name == "langgraph-sqlite":
        import sqlite3

        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(directory / "checkpoints.db", check_same_thread=False)
        return SqliteSaver(conn), conn.close
    if name == "memstate":
        from memstate import MemoryStore as MemStateStore
        from memstate import SQLiteStorage
        from memstate.integrations.langgraph import MemStateCheckpointer

        store = MemStateStore(SQLiteStorage(str(directory / "memstate.db")))
        return MemStateCheckpointer(memory=store), lambda: None
    from langgraph.checkpoint.memory import InMemorySaver

    return InMemorySaver(), lambda: None


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One process: ``spec["turns"]`` turns of one chat thread on ``spec["saver"]``."""
    from typing import Annotated, TypedDict

    from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages

    # Built at run time: this module's annotations are strings, which LangGraph would
    # resolve in the module's namespace, where these imports are not.
    Chat = TypedDict("Chat", {"messages": Annotated[list[AnyMessage], add_messages]})  # noqa: UP013

    def reply(state: Any) -> dict[str, Any]:
        return {"messages": [AIMessage(content=f"answer {len(state['messages'])}: " + "x" * 200)]}

    builder = StateGraph(Chat)
    builder.add_node("reply", reply)
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    saver, close = open_saver(spec["saver"], Path(spec["dir"]))
    try:
        graph: Any = builder.compile(checkpointer=saver)
        config: Any = {"configurable": {"thread_id": "chat"}}
        turns: list[float] = []
        for n in range(spec["turns"]):
            message = HumanMessage(content=f"question {n}: " + "y" * 200)
            started = time.perf_counter()
            graph.invoke({"messages": [message]}, config)
            turns.append(time.perf_counter() - started)
        reads = []
        for _ in range(20):
            started = time.perf_counter()
            state = graph.get_state(config)
            reads.append(time.perf_counter() - started)
        assert len(state.values["messages"]) == 2 * spec["turns"]
        started = time.perf_counter()
        history = list(graph.get_state_history(config))
        history_s = time.perf_counter() - started
    finally:
        close()
    tenth = max(1, len(turns) // 10)
    return {
        "turn_p50_ms": percentile_ms(turns, 0.5),
        "turn_p99_ms": percentile_ms(turns, 0.99),
        "first_tenth_ms": statistics.median(turns[:tenth]) * 1000,
        "last_tenth_ms": statistics.median(turns[-tenth:]) * 1000,
        "get_state_ms": percentile_ms(reads, 0.5),
        "history_ms": history_s * 1000,
        "checkpoints": len(history),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=positive, default=300)
    parser.add_argument("--rounds", type=positive, default=2)
    parser.add_argument("--savers", default=",".join(SAVERS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        serve_child(measure, args.child)
    savers = pick(parser, "--savers", args.savers, SAVERS)
    memstate_python = str(ensure_memstate_env()) if "memstate" in savers else sys.executable
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = savers if round_ % 2 == 0 else savers[::-1]
            for saver in order:
                print(f"  round {round_ + 1}: {saver}", file=sys.stderr)
                spec = {"saver": saver, "turns": args.turns}
                python = memstate_python if saver == "memstate" else sys.executable
                answer = run_child("benchmarks.langgraph_saver", spec, Path(tmp), python)
                if isinstance(answer, str):
                    raise SystemExit(f"{saver}: {answer}")
                runs.append({**spec, "round": round_ + 1, **answer})
    print("## A LangGraph chat thread, checkpointed by each saver\n")
    print(f"Machine: {machine()}\n")
    print(f"{args.turns} turns of one thread (two messages a turn), {args.rounds} round(s).\n")
    print(
        "| saver | round | turn p50 ms | turn p99 ms | first tenth ms | last tenth ms "
        "| get_state ms | whole history ms | checkpoints |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r['saver']} | {r['round']} | {r['turn_p50_ms']:.2f} | {r['turn_p99_ms']:.2f} "
            f"| {r['first_tenth_ms']:.2f} | {r['last_tenth_ms']:.2f} | {r['get_state_ms']:.2f} "
            f"| {r['history_ms']:.0f} | {r['checkpoints']} |"
        )
    if "lockstep" in savers and len(savers) > 1:
        print("\nLockstep's turn p50 against each (same round; below 1.0x: Lockstep faster):\n")
        print("| against | round | turn p50 | last tenth | get_state |")
        print("|---|---:|---:|---:|---:|")
        for r in runs:
            if r["saver"] == "lockstep":
                continue
            ours = next(o for o in runs if o["saver"] == "lockstep" and o["round"] == r["round"])
            print(
                f"| {r['saver']} | {r['round']} "
                f"| {ours['turn_p50_ms'] / r['turn_p50_ms']:.2f}x "
                f"| {ours['last_tenth_ms'] / r['last_tenth_ms']:.2f}x "
                f"| {ours['get_state_ms'] / r['get_state_ms']:.2f}x |"
            )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
