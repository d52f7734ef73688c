"""``agent drafts list|show|approve|reject|edit``: the approval queue, worked from the command line.

Approving or rejecting the last undecided draft of a held batch releases it:
its approved drafts, as edited, go through delivery and its gates (on the
embedded queue and worker threads here), and nothing else of the batch is
ever sent.  ``--no-release`` only records the decisions.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["drafts_app"]

drafts_app = typer.Typer(help="The approval queue: drafts waiting for an operator.", no_args_is_help=True)
console = Console()
JSON_OPT = typer.Option(False, "--json", help="Print raw JSON instead of a table.")
BY_OPT = typer.Option(None, "--by", help="Who decides (default: the login name).")
RELEASE_OPT = typer.Option(True, "--release/--no-release",
                           help="Deliver each batch whose drafts are now all decided.")


def _store() -> Any:
    from agent.drafts import DraftStore
    from agent.settings import get_settings
    from agent.storage.db import Database

    settings = get_settings()
    return DraftStore(Database.for_settings(settings), tenant=settings.tenant)


def _who(by: Optional[str]) -> str:
    if by and by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


@drafts_app.command("list")
def drafts_list(
    campaign: Optional[str] = typer.Option(None, "--campaign", "-c", help="Only this campaign's drafts."),
    status: str = typer.Option("awaiting_approval", "--status",
                               help="awaiting_approval, approved, rejected, or all."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000),
    after: int = typer.Option(0, "--after", min=0, help="Drafts after this id (the next page)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Drafts in the queue, oldest first, with their ICP score."""
    store = _store()
    drafts = store.list(campaign_id=campaign, status=None if status == "all" else status, limit=limit,
                        after_id=after)
    if as_json:
        typer.echo(json.dumps({"drafts": [d.summary() for d in drafts], "counts": store.counts(campaign)}))
        return
    table = Table("id", "campaign", "lead", "to", "subject", "score", "status", title="drafts")
    for d in drafts:
        table.add_row(str(d.id), escape(d.campaign_id), escape(d.lead_id), escape(d.to), escape(d.subject),
                      "" if d.score is None else str(d.score), d.status + (" (edited)" if d.edited else ""))
    console.print(table)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(store.counts(campaign).items())) or "empty"
    console.print(f"queue: {counts}", style="dim")


@drafts_app.command("show")
def drafts_show(draft_id: int = typer.Argument(..., help="The draft's id (from `agent drafts list`)."),
                as_json: bool = JSON_OPT) -> None:
    """One draft in full: the message, its score and reasons, and where it came from."""
    draft = _store().get(draft_id)
    if as_json:
        typer.echo(json.dumps(draft.to_dict()))
        return
    prov = draft.record.get("provenance", {})
    console.print(f"[bold]draft {draft.id}[/] · {escape(draft.status)}"
                  f"{' (edited by ' + escape(draft.decided_by or '?') + ')' if draft.edited else ''}")
    console.print(f"campaign {escape(draft.campaign_id)} · lead {escape(draft.lead_id)} · step {draft.step} · "
                  f"run {draft.run_id}")
    console.print(f"To: {escape(draft.to)}\nSubject: {escape(draft.subject)}\n")
    console.print(escape(draft.body), highlight=False)
    console.print()
    if draft.score is not None:
        console.print(f"ICP score {draft.score}", style="dim")
    details = {k: prov.get(k) for k in ("template_id", "variant_id", "hash", "parents") if prov.get(k)}
    llm = prov.get("llm")
    if isinstance(llm, dict):
        details["model"] = llm.get("model")
    console.print(escape(json.dumps(details)), style="dim")
    if draft.status == "awaiting_approval":
        console.print(f"approve exactly this text: agent drafts approve {draft.id} --seen {str(prov.get('hash'))[:12]}",
                      style="dim")


@drafts_app.command("approve")
def drafts_approve(
    draft_ids: list[int] = typer.Argument(None, help="Draft ids; or --all with --campaign."),
    all_waiting: bool = typer.Option(False, "--all", help="Every draft of --campaign awaiting approval."),
    campaign: Optional[str] = typer.Option(None, "--campaign", "-c"),
    seen: Optional[str] = typer.Option(None, "--seen", help="The hash `drafts show` printed: refuse the "
                                                             "approval if the draft changed since (one id)."),
    by: Optional[str] = BY_OPT,
    release: bool = RELEASE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Approve drafts: they may now be sent (the campaign's delivery gates still apply)."""
    from agent.errors import PayloadError

    store = _store()
    ids = _ids(store, draft_ids, all_waiting, campaign)
    if seen is not None and len(ids) != 1:
        raise PayloadError("seen", "applies to one draft id")
    decided = store.approve(ids, by=_who(by), seen={ids[0]: seen} if seen else None)
    _after_decisions(decided, release=release, as_json=as_json)


@drafts_app.command("reject")
def drafts_reject(
    draft_ids: list[int] = typer.Argument(None, help="Draft ids; or --all with --campaign."),
    all_waiting: bool = typer.Option(False, "--all", help="Every draft of --campaign awaiting approval."),
    campaign: Optional[str] = typer.Option(None, "--campaign", "-c"),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept with the draft)."),
    by: Optional[str] = BY_OPT,
    release: bool = RELEASE_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Reject drafts: they are never sent."""
    store = _store()
    ids = _ids(store, draft_ids, all_waiting, campaign)
    decided = store.reject(ids, by=_who(by), reason=reason)
    _after_decisions(decided, release=release, as_json=as_json)


@drafts_app.command("edit")
def drafts_edit(
    draft_id: int = typer.Argument(...),
    subject: Optional[str] = typer.Option(None, "--subject", help="The new subject line."),
    body: Optional[str] = typer.Option(None, "--body", help="The new body."),
    body_file: Optional[Path] = typer.Option(None, "--body-file", help="Read the new body from this file."),
    by: Optional[str] = BY_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Change a waiting draft's subject or body; the edit passes the same checks as a generated draft."""
    from agent.errors import PayloadError

    if body is not None and body_file is not None:
        raise PayloadError("body", "give --body or --body-file, not both")
    if body_file is not None:
        try:
            body = body_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PayloadError("body_file", f"cannot read {body_file}: {exc}") from None
    store = _store()
    original = store.get(draft_id)
    limits = _limits_of(original)
    draft = store.edit(draft_id, by=_who(by), subject=subject, body=body,
                       check=lambda record: _check_edit(record, original.subject + "\n" + original.body, limits))
    if as_json:
        typer.echo(json.dumps(draft.summary()))
        return
    console.print(f"draft {draft.id} edited; it still awaits approval (`agent drafts approve {draft.id}`)")


def _limits_of(draft: Any) -> Any:
    """The copy limits of the draft's campaign step, from the campaign its batch ran with (recorded in
    the audit store); the defaults when that is gone."""
    from agent.audit import SqlAuditStore
    from agent.campaigns.model import Campaign, CopyLimits
    from agent.storage.db import Database

    run = SqlAuditStore(Database.for_settings()).get_run(draft.run_id)
    try:
        return Campaign.parse(run.meta["campaign"]).template.for_step(draft.step).limits
    except Exception:  # noqa: BLE001 - no run, or a campaign this version cannot read
        return CopyLimits()


def _check_edit(record: dict[str, Any], original: str, limits: Any = None) -> None:
    from agent.campaigns.model import CopyLimits
    from agent.copy.checks import check_draft
    from agent.settings import get_settings

    settings = get_settings()
    check_draft(record["subject"], record["body"], limits=limits or CopyLimits(), fields=("subject", "body"),
                sender=settings.sender, postal_address=settings.postal_address, source=original)


def _ids(store: Any, draft_ids: list[int] | None, all_waiting: bool, campaign: Optional[str]) -> list[int]:
    from agent.errors import PayloadError

    if all_waiting:
        if not campaign:
            raise PayloadError("campaign", "--all needs --campaign")
        if draft_ids:
            raise PayloadError("draft_ids", "give ids or --all, not both")
        return [d.id for d in store.list(campaign_id=campaign, limit=100_000)]
    if not draft_ids:
        raise PayloadError("draft_ids", "name at least one draft id (or --all --campaign ID)")
    return list(dict.fromkeys(draft_ids))


def _after_decisions(decided: list[Any], *, release: bool, as_json: bool) -> None:
    released: list[dict[str, Any]] = []
    if release and decided:
        from agent.campaigns.runner import CampaignRunner

        runner = CampaignRunner()
        reports = runner.release([d.run_id for d in decided])
        if reports:
            reports = runner.work(reports, threads=2)
        released = [{"campaign_id": r.campaign_id, "run": r.run_key, "batches": r.batches,
                     "states": dict(r.states), "statuses": dict(r.statuses)} for r in reports]
    orphans = _unreleasable(decided) if release else []
    if as_json:
        typer.echo(json.dumps({"decided": [d.summary() for d in decided], "released": released,
                               "unreleasable": orphans}))
        return
    for d in decided:
        console.print(f"draft {d.id}: {d.status}")
    for d in orphans:
        console.print(f"draft {d}: its run is not a campaign batch, so no release delivers it", style="yellow")
    for r in released:
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items())) or "nothing"
        console.print(f"released {r['batches']} batch(es) of {escape(r['campaign_id'])}: {statuses}")


def _unreleasable(decided: list[Any]) -> list[int]:
    """Decided drafts whose run is not a campaign batch (an orchestrator run by hand): nothing releases
    them, and the operator should know."""
    from agent.audit import SqlAuditStore
    from agent.storage.db import Database

    audit = SqlAuditStore(Database.for_settings())
    runs = {run_id: audit.get_run(run_id) for run_id in {d.run_id for d in decided}}
    return [d.id for d in decided if runs[d.run_id] is None or "campaign_run" not in runs[d.run_id].meta]
