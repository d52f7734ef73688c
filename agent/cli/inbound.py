"""``agent inbound import|poll|process|show``: replies, bounces and auto-replies, in and acted on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

__all__ = ["inbound_app"]

inbound_app = typer.Typer(help="Inbound mail: stored raw, classified, matched, acted on.", no_args_is_help=True)
console = Console()
JSON_OPT = typer.Option(False, "--json", help="Print raw JSON.")


def _parts() -> tuple[Any, Any, Any]:
    from agent.high_level_agents.orchestrators import ReplyOrchestrator
    from agent.inbound.store import InboundStore
    from agent.settings import get_settings
    from agent.storage.db import Database

    settings = get_settings()
    store = InboundStore(Database.for_settings(settings), tenant=settings.tenant)
    return settings, store, ReplyOrchestrator(settings=settings)


def _finish(report: Any, store: Any, orchestrator: Any, process: bool, as_json: bool) -> None:
    from agent.inbound.intake import process_pending

    counts = process_pending(orchestrator, store, limit=100_000) if process else {}
    data = {**report.to_dict(), "processed": counts}
    if as_json:
        typer.echo(json.dumps(data))
        return
    console.print(f"{data['stored']} stored, {data['duplicates']} already kept, {len(data['refused'])} refused")
    for item in data["refused"]:
        console.print(f"  refused {item['where']}: {item['why']}", style="yellow", markup=False)
    if counts:
        console.print("processed: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


@inbound_app.command("import")
def inbound_import(paths: list[Path] = typer.Argument(..., help=".eml files or mbox files."),
                   process: bool = typer.Option(True, "--process/--no-process"), as_json: bool = JSON_OPT) -> None:
    """Store each message raw, then classify and act on what is new."""
    from agent.inbound.intake import import_paths

    _, store, orchestrator = _parts()
    _finish(import_paths(store, paths), store, orchestrator, process, as_json)


@inbound_app.command("poll")
def inbound_poll(process: bool = typer.Option(True, "--process/--no-process"), as_json: bool = JSON_OPT) -> None:
    """Fetch the IMAP folder's messages not read yet (a cursor per folder; AGENT_IMAP_*), store them, then process them."""
    from agent.inbound.intake import poll_imap

    settings, store, orchestrator = _parts()
    _finish(poll_imap(store, settings), store, orchestrator, process, as_json)


@inbound_app.command("process")
def inbound_process(as_json: bool = JSON_OPT) -> None:
    """Process every stored message not processed yet (after a crash, or --no-process)."""
    from agent.inbound.intake import IntakeReport

    _, store, orchestrator = _parts()
    _finish(IntakeReport(), store, orchestrator, True, as_json)


@inbound_app.command("show")
def inbound_show(inbound_id: int = typer.Argument(...)) -> None:
    """What processing one stored message decided."""
    _, store, _ = _parts()
    stored = store.get(inbound_id)
    typer.echo(json.dumps({"inbound_id": stored.id, "source": stored.source, "kind": stored.kind,
                           "result": store.result(inbound_id)}, indent=2))
