"""Engine overhead against LangGraph, in one process run.

Two flows, built in both engines with the same node functions and no I/O:

- chain: three nodes in a row;
- fan:   one source, five branches in parallel, one join.

Each node derives three records from what it read.  Our engine validates
every node's envelope and fills provenance (hash, run_id, node, parents);
LangGraph just passes its state along, so the comparison is our full
contract against LangGraph's bare minimum.  Then both again with SQLite
checkpoints (ours: SqlCheckpointStore; LangGraph: SqliteSaver), one fresh
run (thread) per invocation.

Rounds of ours and LangGraph's alternate, so the machine's changes of speed
fall on both sides alike; each figure is a median over the rounds, and each
ratio the median of the per-round ratios.  Prints per-run times, the ratios, PASS/FAIL against the targets (<= 0.1
without checkpoints, <= 0.5 with), and last `engine_vs_langgraph_ratio=`,
the worst of the two ratios without checkpoints.

    python bench/engine.py [--runs N]
"""

from __future__ import annotations

import argparse
import operator
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.engine import Engine, Flow, SqlCheckpointStore  # noqa: E402
from agent.registry import Registry  # noqa: E402
from bench.common import cpu_reference  # noqa: E402

BRANCHES = 5


def derive(name: str, upstream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The work of every node: three records from what it read."""
    total = sum(r.get("value", 1) for r in upstream)
    return [{"node": name, "index": i, "value": total + i} for i in range(3)]


# -- ours ------------------------------------------------------------------------------------
def our_node(name: str) -> Callable[[Any], list[dict[str, Any]]]:
    return lambda state: derive(name, state.records())


def our_flows() -> dict[str, Any]:
    chain = (Flow("chain").node("a", our_node("a")).node("b", our_node("b")).node("c", our_node("c"))
             .then("a", "b", "c").build())
    fan = Flow("fan").node("source", our_node("source"))
    for i in range(BRANCHES):
        fan.node(f"branch{i}", our_node(f"branch{i}"))
    fan.merge("join").fan_out("source", [f"branch{i}" for i in range(BRANCHES)], join="join")
    return {"chain": chain, "fan": fan.build()}


# -- LangGraph ---------------------------------------------------------------------------------
class ChainState(TypedDict):
    records: list[dict[str, Any]]


class FanState(TypedDict):
    records: list[dict[str, Any]]
    branches: Annotated[list[dict[str, Any]], operator.add]


def lg_flows(checkpointer: Any = None) -> dict[str, Any]:
    from langgraph.graph import END, START, StateGraph

    def node(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        return lambda state: {"records": derive(name, state["records"])}

    chain = StateGraph(ChainState)
    for name in "abc":
        chain.add_node(name, node(name))
    chain.add_edge(START, "a")
    chain.add_edge("a", "b")
    chain.add_edge("b", "c")
    chain.add_edge("c", END)

    fan = StateGraph(FanState)
    fan.add_node("source", node("source"))
    for i in range(BRANCHES):
        fan.add_node(f"branch{i}", lambda state, i=i: {"branches": derive(f"branch{i}", state["records"])})
        fan.add_edge("source", f"branch{i}")
    fan.add_node("join", lambda state: {"records": list(state["branches"])})
    fan.add_edge([f"branch{i}" for i in range(BRANCHES)], "join")
    fan.add_edge(START, "source")
    fan.add_edge("join", END)
    return {"chain": chain.compile(checkpointer=checkpointer), "fan": fan.compile(checkpointer=checkpointer)}


# -- timing ------------------------------------------------------------------------------------
def mean_us(call: Callable[[int], Any], runs: int, start: int) -> float:
    started = time.perf_counter()
    for i in range(runs):
        call(start + i)
    return (time.perf_counter() - started) / runs * 1e6


def compare(ours: Callable[[int], Any], theirs: Callable[[int], Any], runs: int,
            rounds: int = 7) -> tuple[float, float, float]:
    """Median time per run of each (µs) and the median of the per-round ratios.

    Rounds alternate between the two, so a change in the machine's speed (these
    machines swing a lot) falls on both sides of the ratio alike.
    """
    for i in range(max(5, runs // 10)):  # warm-up
        ours(-1 - i)
        theirs(-1 - i)
    mine, peer, ratios = [], [], []
    for r in range(rounds):
        mine.append(mean_us(ours, runs, r * runs))
        peer.append(mean_us(theirs, runs, r * runs))
        ratios.append(mine[-1] / peer[-1])
    return statistics.median(mine), statistics.median(peer), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    from importlib.metadata import version

    print(f"python {sys.version.split()[0]}; langgraph {version('langgraph')}; "
          f"langgraph-checkpoint-sqlite {version('langgraph-checkpoint-sqlite')}; sqlite {sqlite3.sqlite_version}")
    print(f"cpu_ref_start_s={cpu_reference():.3f}")
    ours, theirs = our_flows(), lg_flows()
    engine = Engine(Registry())
    ratios: dict[str, float] = {}
    for name in ("chain", "fan"):
        graph, compiled = ours[name], theirs[name]
        check = engine.run(graph, {"records": []})
        assert check.status == "succeeded" and check.envelope and check.envelope["records"]
        us, lg, ratios[name] = compare(lambda i: engine.run(graph, {"records": []}),
                                       lambda i: compiled.invoke({"records": []}), args.runs)
        print(f"{name:6} no checkpoints: ours {us:9.1f} us/run   langgraph {lg:9.1f} us/run   "
              f"ratio {ratios[name]:.3f}  {'PASS' if ratios[name] <= 0.1 else 'FAIL'} (<= 0.1)")

    with tempfile.TemporaryDirectory() as tmp:
        store = SqlCheckpointStore(f"sqlite:///{tmp}/ours.db")
        durable = Engine(Registry(), checkpoints=store)
        conn = sqlite3.connect(f"{tmp}/langgraph.db", check_same_thread=False)
        from langgraph.checkpoint.sqlite import SqliteSaver

        saved = lg_flows(SqliteSaver(conn))
        cp_runs = max(20, args.runs // 8)
        for name in ("chain", "fan"):
            graph, compiled = ours[name], saved[name]
            us, lg, ratio = compare(
                lambda i: durable.run(graph, {"records": []}, run_id=f"{name}-{i}"),
                lambda i: compiled.invoke({"records": []}, {"configurable": {"thread_id": f"{name}-{i}"}}),
                cp_runs, rounds=5)
            print(f"{name:6} sqlite checkpoints: ours {us:9.1f} us/run   langgraph {lg:9.1f} us/run   "
                  f"ratio {ratio:.3f}  {'PASS' if ratio <= 0.5 else 'FAIL'} (<= 0.5)")
        conn.close()
    engine.close()
    print(f"cpu_ref_end_s={cpu_reference():.3f}")
    print(f"engine_vs_langgraph_ratio={max(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
