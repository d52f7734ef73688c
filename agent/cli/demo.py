"""``agent demo``: the main job end to end on embedded defaults.

Find leads at Acme, draft a message each from a fixed template, show that
delivery is off by default, then deliver into the local outbox (``.eml``
files; nothing leaves the machine) and trace one message back to its lead row.
Running it again shows idempotency: the same messages are not written twice.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from agent.cli.render import delivery_table, leads_table
from agent.envelope import make_envelope

__all__ = ["run_demo", "draft_messages"]

CAMPAIGN = "demo-acme"
TEMPLATE_SUBJECT = "{company} and outbound pipeline quality"
TEMPLATE_BODY = (
    "Hi {first_name},\n\n"
    "I noticed you lead {title_lower} at {company}. Teams like yours use us to find the right "
    "accounts and write to them without guesswork.\n\n"
    "Would a 15-minute call next week be useful?\n\nBest,\nThe Outreach Team"
)


def draft_messages(leads: dict[str, Any], *, campaign_id: str) -> dict[str, Any]:
    """One message per lead from a fixed template; each keeps its lead as parent."""
    records = []
    for lead in leads["records"]:
        fields = {"first_name": lead["first_name"] or "there", "company": lead["company"] or "your company",
                  "title_lower": (lead["title"] or "the team").lower()}
        record = {
            "to": lead["email"], "lead_id": str(lead["lead_id"]), "campaign_id": campaign_id, "step": 1,
            "subject": TEMPLATE_SUBJECT.format(**fields), "body": TEMPLATE_BODY.format(**fields),
            "template": "demo/v1",
            "provenance": {"source": "copywriter:template", "parents": [lead["provenance"]["hash"]]},
        }
        records.append(record)
    return make_envelope(records, source="copywriter:template", run_id=leads["metadata"]["run_id"],
                         flow="demo", node="draft", agent="template")


def run_demo(console: Console, *, as_json: bool = False) -> dict[str, Any]:
    from agent.high_level_agents.orchestrators import DeliveryOrchestrator, LeadOrchestrator
    from agent.settings import get_settings
    from agent.storage.db import Database

    settings = get_settings()
    db = Database.for_settings(settings)
    leads = LeadOrchestrator(settings=settings).run({"lead_query": {"company": "Acme", "limit": 5}})
    drafts = draft_messages(leads, campaign_id=CAMPAIGN)
    delivery = DeliveryOrchestrator(settings=settings)
    gated = delivery.run({**drafts, "campaign_id": CAMPAIGN})
    sent = delivery.run({**drafts, "campaign_id": CAMPAIGN, "allow_delivery": True})
    result = {"leads": leads, "drafts": drafts, "delivery_disabled": gated, "delivered": sent}
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return result

    console.print(Panel.fit(
        f"Embedded defaults · database [bold]{escape(db.safe_url)}[/]\n"
        f"Outbox [bold]{escape(str(settings.resolved_outbox_dir))}[/] (files only: nothing leaves this machine)",
        title="agent demo"))
    console.print(leads_table(leads, title='1. Leads for lead_query {"company": "Acme"}'))
    console.print(delivery_table(gated, title="2. Delivery with allow_delivery off (the default)"))
    console.print(delivery_table(sent, title="3. Delivery with allow_delivery on: outbox channel"))
    counts = sent["metadata"].get("counts", {})
    if counts.get("duplicate"):
        console.print("[yellow]Already delivered in an earlier run: idempotency keys stopped a second copy.[/]")
    first = sent["records"][0] if sent["records"] else None
    if first is not None:
        lead = leads["records"][0]
        console.print(Panel.fit(escape(
            f"message {first['message_id']}\n"
            f"  ← draft {drafts['records'][0]['provenance']['hash'][:16]}… (template demo/v1)\n"
            f"  ← lead  {lead['provenance']['hash'][:16]}… = {lead['provenance']['source_id']} "
            f"({lead['full_name']}, {lead['company']})\n"
            f"file: {first['location']}"),
            title="4. Lineage of the first message"))
    return result
