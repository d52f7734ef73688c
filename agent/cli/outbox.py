"""``agent outbox list|settle``: the outbox ledger for an operator, and answers for ``unknown`` rows.

A row is ``unknown`` when its DATA may or may not have reached the server (the
connection was lost after the body went out, or a worker died holding it).
The system never sends it again on its own; an operator who checked (the
mail server's log, the recipient's answer) settles it: ``--delivered`` makes it
``sent``, ``--not-delivered`` makes it ``failed`` so the next attempt sends it
under the same Message-ID.  Either way the lead's sequence, stopped as
``delivery_unknown``, goes on at the next ``agent campaign tick``.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["outbox_app"]

outbox_app = typer.Typer(help="The outbox ledger: rows by state, and settling unknown deliveries.",
                         no_args_is_help=True)
console = Console()
JSON_OPT = typer.Option(False, "--json", help="Print raw JSON.")
_STATES = ("drafted", "approved", "sending", "sent", "failed", "unknown", "cancelled")


@outbox_app.command("list")
def outbox_list(state: str = typer.Option(None, help="Only rows in this state (unknown: those to settle)."),
                limit: int = typer.Option(50, min=1, max=100_000), as_json: bool = JSON_OPT) -> None:
    """Outbox rows, newest first."""
    from agent.delivery.ledger import OutboxLedger
    from agent.errors import PayloadError
    from agent.settings import get_settings
    from agent.storage.db import Database

    if state is not None and state not in _STATES:
        raise PayloadError("state", f"must be one of {', '.join(_STATES)}")
    settings = get_settings()
    rows = OutboxLedger(Database.for_settings(settings)).rows(state=state, tenant=settings.tenant, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table("key", "state", "campaign", "lead", "step", "to", "message id")
    for row in rows:
        table.add_row(row["idempotency_key"][:16], row["state"], row["campaign_id"], row["lead_id"],
                      str(row["step"]), row["to_address"], row["message_id"])
    console.print(table)


@outbox_app.command("settle")
def outbox_settle(key: str = typer.Argument(..., help="The row's idempotency key (or its first 16 characters)."),
                  delivered: bool = typer.Option(..., "--delivered/--not-delivered",
                                                 help="What the mail server's log (or the recipient) says.")) -> None:
    """Answer an ``unknown`` row: delivered (sent) or not (failed: sent again, same Message-ID)."""
    from agent.delivery.ledger import OutboxLedger
    from agent.errors import PayloadError
    from agent.sequences import EnrolmentStore
    from agent.settings import get_settings
    from agent.storage.db import Database

    settings = get_settings()
    db = Database.for_settings(settings)
    ledger = OutboxLedger(db)
    matches = [r for r in ledger.rows(state="unknown", tenant=settings.tenant, limit=100_000)
               if r["idempotency_key"].startswith(key.strip().lower())]
    if len(key.strip()) < 16 or len(matches) != 1:
        raise PayloadError("key", "names no unknown row" if not matches or len(key.strip()) < 16
                           else "matches more than one unknown row: give more of it")
    row = matches[0]
    settled = ledger.settle(row["idempotency_key"], delivered=delivered)
    if settled is None:
        raise PayloadError("key", "the row is no longer unknown")
    reopened = EnrolmentStore(db, tenant=settings.tenant).reopen(row["campaign_id"], row["lead_id"], row["step"])
    console.print(f"{row['idempotency_key'][:16]} is now {settled.state}"
                  + ("; its sequence goes on at the next tick" if reopened else ""), markup=False)
