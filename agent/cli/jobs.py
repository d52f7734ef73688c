"""``agent jobs stats|dead``: what a broker-backed queue holds, from our job ledger (no broker needed)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["jobs_app"]

jobs_app = typer.Typer(help="Jobs of the Celery queue, as the job ledger records them.", no_args_is_help=True)
console = Console()
TOPIC = typer.Option("campaigns", "--topic", "-Q", help="The topic (Celery queue).")
JSON_OPT = typer.Option(False, "--json", help="Print raw JSON instead of a table.")


def _ledger() -> Any:
    from agent.queues.ledger import SqlJobLedger
    from agent.storage.db import Database

    return SqlJobLedger(Database.for_settings())


@jobs_app.command("stats")
def jobs_stats(topic: str = TOPIC, as_json: bool = JSON_OPT) -> None:
    """Jobs of TOPIC by state: ready, in flight, delayed (waiting to retry), dead."""
    from agent.queues.base import check_topic

    stats = _ledger().stats(check_topic(topic))
    data = {"topic": topic, "ready": stats.ready, "in_flight": stats.in_flight, "delayed": stats.delayed,
            "dead": stats.dead}
    if as_json:
        typer.echo(json.dumps(data))
        return
    table = Table("topic", "ready", "in flight", "delayed", "dead")
    table.add_row(*(str(v) for v in data.values()))
    console.print(table)


@jobs_app.command("dead")
def jobs_dead(topic: str = TOPIC, as_json: bool = JSON_OPT) -> None:
    """The dead letters of TOPIC, oldest first, with the error that ended each (redacted)."""
    from agent.queues.base import check_topic

    dead = _ledger().dead_letters(check_topic(topic))
    rows = [{"job_id": j.job_id, "run_id": j.run_id, "orchestrator": j.orchestrator, "attempts": j.attempts,
             "campaign_id": j.meta.get("campaign_id"), "last_error": j.meta.get("last_error")} for j in dead]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("job", "run", "orchestrator", "attempts", "campaign", "last error", title=f"dead letters of {topic}")
    for row in rows:
        table.add_row(row["job_id"], row["run_id"], row["orchestrator"], str(row["attempts"]),
                      row["campaign_id"] or "", row["last_error"] or "")
    console.print(table)
    if rows:
        console.print("`agent runs show RUN_ID` shows each run's failures; `agent campaign resume ID` does not "
                      "revive dead batches: fix the cause, then run the campaign again.", style="dim")
