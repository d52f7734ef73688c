"""``agent sequences list`` and ``agent sending pauses|pause|resume``: where each lead stands, and the off switch."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["sequences_app", "sending_app"]

sequences_app = typer.Typer(help="Each lead's place in a campaign's sequence.", no_args_is_help=True)
sending_app = typer.Typer(help="Pause and resume sending, per mailbox or per campaign.", no_args_is_help=True)
console = Console()
JSON_OPT = typer.Option(False, "--json", help="Print raw JSON.")


def _db() -> tuple[Any, Any]:
    from agent.settings import get_settings
    from agent.storage.db import Database

    settings = get_settings()
    return settings, Database.for_settings(settings)


@sequences_app.command("list")
def sequences_list(campaign: str = typer.Option(None, help="Only this campaign's enrolments."),
                   status: str = typer.Option(None, help="active, paused, stopped or completed."),
                   limit: int = typer.Option(100, min=1, max=100_000), as_json: bool = JSON_OPT) -> None:
    """Enrolments: the next step, when it is due, and why a sequence stopped."""
    from agent.errors import PayloadError
    from agent.sequences import ACTIVE, COMPLETED, PAUSED, STOPPED, EnrolmentStore

    if status is not None and status not in (ACTIVE, PAUSED, STOPPED, COMPLETED):
        raise PayloadError("status", "must be active, paused, stopped or completed")
    settings, db = _db()
    found = EnrolmentStore(db, tenant=settings.tenant).list(campaign_id=campaign, status=status, limit=limit)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in found], indent=2))
        return
    table = Table("campaign", "lead", "status", "next step", "due", "sent", "stopped because")
    for e in found:
        table.add_row(e.campaign_id, e.lead_id, e.status, str(e.next_step),
                      e.due_at.isoformat(timespec="minutes") if e.due_at else "-", str(len(e.thread)),
                      e.stop_reason or "")
    console.print(table)


def _scope(mailbox: str | None, campaign: str | None) -> str:
    from agent.errors import PayloadError

    if bool(mailbox) == bool(campaign):
        raise PayloadError("scope", "give exactly one of --mailbox or --campaign")
    return f"mailbox:{mailbox.strip().lower()}" if mailbox else f"campaign:{campaign}"


MAILBOX = typer.Option(None, "--mailbox", help="A sending address (the From of your campaigns).")
CAMPAIGN = typer.Option(None, "--campaign", help="A campaign id.")


@sending_app.command("pauses")
def sending_pauses(as_json: bool = JSON_OPT) -> None:
    """What is paused now, why, and since when."""
    from agent.delivery.pacing import Pacer

    settings, db = _db()
    found = Pacer(db, tenant=settings.tenant).pauses()
    if as_json:
        typer.echo(json.dumps(found, indent=2, default=str))
        return
    if not found:
        console.print("nothing is paused")
    for pause in found:
        console.print(f"{pause['scope']}  {pause['reason']}  since {pause['since']}  {pause.get('evidence') or ''}",
                      markup=False)


@sending_app.command("pause")
def sending_pause(mailbox: str = MAILBOX, campaign: str = CAMPAIGN,
                  reason: str = typer.Option("manual", help="Why (kept with the pause).")) -> None:
    """Stop sending now: every channel checks this right before each message."""
    from agent.delivery.pacing import Pacer

    settings, db = _db()
    scope = _scope(mailbox, campaign)
    newly = Pacer(db, tenant=settings.tenant).pause(scope, reason=reason[:64] or "manual")
    console.print(f"{scope} {'paused' if newly else 'was already paused'}", markup=False)


@sending_app.command("resume")
def sending_resume(mailbox: str = MAILBOX, campaign: str = CAMPAIGN) -> None:
    """Lift a pause (after the cause of a bounce-rate or policy pause is fixed)."""
    from agent.delivery.pacing import Pacer

    settings, db = _db()
    scope = _scope(mailbox, campaign)
    resumed = Pacer(db, tenant=settings.tenant).resume(scope)
    console.print(f"{scope} {'resumed' if resumed else 'was not paused'}", markup=False)
