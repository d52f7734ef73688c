"""``agent flow list|show``: the flows the orchestrators run, as tables or Mermaid."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from agent.errors import InvalidInput

__all__ = ["flow_app"]

flow_app = typer.Typer(help="Show the flows orchestrators run on the engine.", no_args_is_help=True)
console = Console()


def _orchestrators() -> dict[str, Any]:
    from agent.builtins import default_registry

    registry = default_registry()
    return {name: registry.get(name) for name in registry.list(kind="orchestrator")}


def _graph(name: str) -> Any:
    orchestrators = _orchestrators()
    if name not in orchestrators:
        raise InvalidInput("name", f"no orchestrator {name!r}; known: {', '.join(sorted(orchestrators))}")
    orchestrator = orchestrators[name]
    instance = orchestrator() if isinstance(orchestrator, type) else orchestrator
    return instance.build_flow()


@flow_app.command("list")
def flow_list() -> None:
    """Every registered orchestrator and the nodes of its flow."""
    table = Table("orchestrator", "nodes")
    for name in sorted(_orchestrators()):
        try:
            graph = _graph(name)
        except NotImplementedError:
            table.add_row(name, "(no flow)")
            continue
        table.add_row(name, " ".join(graph.nodes))
    console.print(table)


@flow_app.command("show")
def flow_show(
    name: str = typer.Argument(..., help="A registered orchestrator, e.g. lead_orchestrator."),
    mermaid: bool = typer.Option(False, "--mermaid", help="Print a Mermaid flowchart."),
    as_json: bool = typer.Option(False, "--json", help="Print the graph as JSON."),
) -> None:
    """One orchestrator's flow: nodes, their policy, and the transitions."""
    graph = _graph(name)
    if mermaid:
        typer.echo(graph.to_mermaid())
        return
    description = graph.describe()
    if as_json:
        import json

        typer.echo(json.dumps(description, indent=2))
        return
    table = Table("node", "kind", "agent", "next", "policy", title=f"flow {graph.name} (start: {graph.start})")
    for node in description["nodes"]:
        if "then" in node:
            nxt = node["then"]
        elif "routes" in node:
            nxt = ", ".join(f"{label} → {target}" for label, target in node["routes"].items())
        elif "fan_out" in node:
            nxt = f"∥ {', '.join(node['fan_out']['branches'])} → {node['fan_out']['join']}"
        else:
            nxt = "(end)"
        policy = [f"retry {node['retry']}" if node["retry"] > 1 else "", f"timeout {node['timeout']}s"
                  if node["timeout"] else "", "partial ok" if node["allow_partial"] else ""]
        table.add_row(node["name"], node["kind"], node["agent"] or "", nxt, " ".join(p for p in policy if p))
    console.print(table)
