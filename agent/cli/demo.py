"""``agent demo``: the main job end to end, through the queue, on embedded defaults.

It runs the sample campaign shipped with the package
(``agent/campaigns/sample_campaign.yaml``: Fintech leads from the generated
sample data) the way ``agent campaign run`` does: ``CampaignRunner.start``
plans the leads into batch jobs on the in-memory queue and ``work`` runs them
on worker threads, audited.  Before that, one batch runs with
``allow_delivery`` off (the default) to show the gate.  Delivery only writes
``.eml`` files into the local outbox: nothing leaves the machine.  The first
message is then traced back to its lead row through the audit store.

The campaign run has a fixed run key, so running the demo again re-plans the
same batches: their runs already succeeded, the workers ack them without
running, and no message is written twice.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

__all__ = ["run_demo", "sample_campaign_path", "RUN_KEY", "GATE_RUN_KEY"]

RUN_KEY = "demo"  # fixed: a second demo re-plans the same batches (same run ids, same idempotency keys)
GATE_RUN_KEY = "demo-gate"
THREADS = 4


def sample_campaign_path() -> Path:
    """The sample campaign file shipped inside the package (package data, so it works when pip-installed)."""
    return Path(str(resources.files("agent.campaigns").joinpath("sample_campaign.yaml")))


def run_demo(console: Console, *, as_json: bool = False) -> dict[str, Any]:
    from agent.campaigns.model import load_campaign
    from agent.campaigns.runner import CampaignRunner
    from agent.cli.campaign import _work

    runner = CampaignRunner()
    settings, outbox = runner.settings, runner.settings.resolved_outbox_dir
    path = sample_campaign_path()
    campaign = load_campaign(path)
    result: dict[str, Any] = {
        "defaults": {"database": _safe_url(runner), "outbox": str(outbox), "tenant": settings.tenant},
        "campaign_file": str(path), "campaign": campaign.model_dump(mode="json"),
    }
    if not as_json:
        _intro(console, result, campaign)

    ids = runner.find_leads(campaign)
    if not ids:
        result.update(gate=None, report=None, outbox_files=None, first_message=None)
        if as_json:
            _print_json(result)
        else:
            console.print(Text(f"No lead matches {json.dumps(campaign.lead_query)}: the sample leads load only "
                               "into an empty store (the embedded default, or any with AGENT_SAMPLE_DATA=on).",
                               style="yellow"))
        return result

    # A demo run before this one (same run keys): its finished batches are acked without running again.
    earlier = runner.report(campaign.id, RUN_KEY, messages=False)
    repeat = earlier.batches > 0 and earlier.states["succeeded"] == earlier.batches
    quiet = repeat or runner.report(campaign.id, GATE_RUN_KEY, messages=False).finished

    # The gate: one batch of the same leads with allow_delivery off (the default) writes nothing.
    gated = campaign.model_copy(update={"allow_delivery": False})
    before_gate = _eml_count(outbox)
    with _quiet_repeats(quiet):
        [gate] = runner.work([runner.start(gated, run_key=GATE_RUN_KEY,
                                           lead_ids=ids[:campaign.limits.batch_size])], threads=1)
    reasons = Counter(r.get("reason") for r in _batch_records(runner, campaign.id, GATE_RUN_KEY, 0))
    result["gate"] = {**_report_dict(gate), "reasons": dict(reasons),
                      "eml_written": _eml_count(outbox) - before_gate}
    if not as_json:
        _gate(console, result["gate"])

    # The campaign run, through the queue and worker threads.
    before = _eml_count(outbox)
    report = runner.start(campaign, run_key=RUN_KEY, lead_ids=ids)
    with _quiet_repeats(quiet):
        if as_json:
            report = runner.work([report], threads=THREADS)[0]
        else:
            console.rule(Text("3. The campaign run: batch jobs on the in-memory queue, run by worker threads"),
                         align="left")
            # Progress bar and summary table, as `agent campaign run`.
            [report] = _work(runner, [report], THREADS, False)
    after = _eml_count(outbox)
    result["report"] = {**_report_dict(report), "finished_before": repeat}
    result["outbox_files"] = {"before": before, "after": after, "new": after - before}
    if not as_json:
        _idempotency(console, report, repeat=repeat, new=after - before)

    result["first_message"] = _first_message(runner, campaign.id)
    if as_json:
        _print_json(result)
    else:
        _lineage(console, result["first_message"])
    return result


# -- data ------------------------------------------------------------------------------------------
def _safe_url(runner: Any) -> str:
    from agent.storage.db import Database

    return Database.for_settings(runner.settings).safe_url


def _eml_count(outbox: Path) -> int:
    return sum(1 for _ in outbox.glob("*.eml")) if outbox.is_dir() else 0


def _report_dict(report: Any) -> dict[str, Any]:
    # The same keys as `agent campaign run --json`.
    return {"campaign_id": report.campaign_id, "run": report.run_key, "batches": report.batches,
            "leads": report.leads, "batch_states": dict(report.states), "messages": dict(report.statuses)}


def _batch_records(runner: Any, campaign_id: str, run_key: str, index: int) -> list[dict[str, Any]]:
    """The final records of one batch (one per lead, in batch order), as the audit store keeps them."""
    from agent.campaigns.planning import batch_run_id

    envelopes = runner.audit.envelopes(batch_run_id(campaign_id, run_key, index))
    return envelopes[-1].envelope["records"] if envelopes else []


def _first_message(runner: Any, campaign_id: str) -> dict[str, Any] | None:
    """The first lead's message of the run, and its lineage (what `agent trace` shows)."""
    first = next((r for r in _batch_records(runner, campaign_id, RUN_KEY, 0) if r.get("message_id")), None)
    delivery = runner.audit.message(first["message_id"]) if first else None
    if delivery is None:
        return None
    return {"message": dict(delivery.__dict__), "location": first.get("location"),
            "lineage": runner.audit.lineage(delivery.message_id)}


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


# -- rendering (data goes in as Text: nothing in it is read as markup) ------------------------------
def _intro(console: Console, result: dict[str, Any], campaign: Any) -> None:
    defaults = result["defaults"]
    console.print(Panel(Group(
        Text.assemble("Database  ", (defaults["database"], "bold")),
        Text.assemble("Outbox    ", (defaults["outbox"], "bold")),
        Text(""),
        Text.assemble(("Delivery writes .eml files into ", "bold green"), (defaults["outbox"], "bold green"),
                      ("; nothing leaves this machine.", "bold green")),
    ), title="agent demo · embedded defaults", title_align="left"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("file", Text(result["campaign_file"]))
    table.add_row("campaign", Text(f"{campaign.id} · {campaign.name}"))
    table.add_row("lead_query", Text(json.dumps(campaign.lead_query)))
    table.add_row("limits", Text(f"{campaign.limits.per_run} leads per run, batches of {campaign.limits.batch_size}"))
    table.add_row("template", Text(f"{campaign.template.id}: {campaign.template.subject}"))
    table.add_row("delivery", Text(f"allow_delivery: {str(campaign.allow_delivery).lower()} (set in the file; "
                                   "the default is false)"))
    console.print(Panel(table, title="1. The sample campaign", title_align="left"))


def _gate(console: Console, gate: dict[str, Any]) -> None:
    messages = ", ".join(f"{k} {v}" for k, v in sorted(gate["messages"].items())) or "none"
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(gate["reasons"].items(), key=lambda kv: str(kv[0])))
    console.print(Panel(Group(
        Text("Delivery is off unless a campaign turns it on. One batch of the campaign's leads, run through "
             "the same queue with allow_delivery off:"),
        Text.assemble("  messages: ", (messages, "bold"), f"  (reason: {reasons or '-'})"),
        Text.assemble("  .eml files written: ", (str(gate["eml_written"]), "bold")),
    ), title="2. The gate: allow_delivery off (the default)", title_align="left"))


def _idempotency(console: Console, report: Any, *, repeat: bool, new: int) -> None:
    if repeat:
        console.print(Text(f"Already delivered in an earlier run: nothing sent twice, {new} new .eml files. Run "
                           f"{report.run_key!r} planned the same {report.batches} batches with the same "
                           "idempotency keys; they had succeeded, so the workers acked them without running "
                           "again: idempotency keys stopped a second copy.", style="yellow"))
    else:
        console.print(Text(f"{new} messages written, one .eml file each. Run the demo again: nothing is sent "
                           "twice.", style="green"))


def _lineage(console: Console, first: dict[str, Any] | None) -> None:
    if first is None:
        console.print(Text("No message was sent, so there is no lineage to show.", style="yellow"))
        return
    message = first["message"]
    lines = [Text.assemble("message ", (message["message_id"], "bold")),
             Text(f"to      {message['to']} ({message['status']})")]
    for link in first["lineage"]:
        record, indent = link["record"], "  " * link["depth"]
        source_id = (record.get("provenance") or {}).get("source_id") or ""
        if link["node"] == "channel":
            what = f"outbox file {source_id[:16]}….eml"
        elif link["node"] == "draft":
            what = f"template {record.get('template_id')}: {record.get('subject')}"
        elif source_id.startswith("contacts/"):
            what = (f"lead row {source_id}: {record.get('full_name')}, {record.get('title')} at "
                    f"{record.get('company')}")
        else:
            what = source_id
        lines.append(Text(f"{indent}← {link['node']} {link['hash'][:12]}…  {what}".rstrip()))
    if first.get("location"):
        lines += [Text("The message as written (open it in any mail client):", style="dim"),
                  Text(first["location"], overflow="fold")]
    lines += [Text("The same walk from the shell:", style="dim"), Text(f"  agent trace '{message['message_id']}'")]
    console.print(Panel(Group(*lines), title="4. Lineage of the first message, from the audit store",
                        title_align="left"))


class _QuietRepeats(logging.Filter):
    """Drops the worker's warning about a finished run acked without running: in a repeated demo that is
    the expected outcome, and the demo says so itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "acked without running" not in record.getMessage()


@contextmanager
def _quiet_repeats(enabled: bool) -> Iterator[None]:
    logger, quiet = logging.getLogger("agent.worker"), _QuietRepeats()
    if enabled:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
