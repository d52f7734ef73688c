"""``agent campaign run|resume`` and ``agent runs list|show`` / ``agent trace``: the main job and its audit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

__all__ = ["campaign_app", "runs_app", "trace"]

campaign_app = typer.Typer(help="Run outreach campaigns on the embedded defaults.", no_args_is_help=True)
runs_app = typer.Typer(help="The audit trail of runs.", no_args_is_help=True)
console = Console()

THREADS = typer.Option(4, min=1, max=64, help="Jobs at once (in-memory backend): the worker threads without "
                                               "worker processes; with processes auto, at most this many "
                                               "processes in all.")
PROCESSES = typer.Option(None, help="Worker processes forked besides this one, which runs batches too "
                                    "(in-memory backend): a number, 0 for threads of this process only, or auto "
                                    "(one process per core in all, at most 4, for several batches). "
                                    "Default: the processes setting (AGENT_PROCESSES, auto).")
BACKEND = typer.Option("memory", help="memory: worker threads in this process; celery: the broker's workers "
                                      "(`agent worker`) run the batches and this command watches.")
JSON_OPT = typer.Option(False, "--json", help="Print raw JSON instead of tables.")


def _runner(backend: str = "memory") -> Any:
    from agent.campaigns.runner import CampaignRunner
    from agent.errors import InvalidInput

    if backend == "memory":
        return CampaignRunner()
    if backend != "celery":
        raise InvalidInput("backend", "must be memory or celery")
    from agent.queues.celery_queue import CeleryQueue
    from agent.settings import get_settings

    settings = get_settings()
    return CampaignRunner(settings, queue=CeleryQueue(settings=settings))


def _processes(value: str | None) -> int | str | None:
    from agent.errors import InvalidInput

    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    if not value.strip().isdigit():
        raise InvalidInput("processes", "must be auto or a number of processes from 0 to 64")
    return int(value)


def _work(runner: Any, reports: list[Any], threads: int, as_json: bool, count: int | str | None = None) -> list[Any]:
    if as_json or not reports:
        finished = runner.work(reports, threads=threads, processes=count)
    else:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as bar:
            tasks = {r.run_key: bar.add_task(f"campaign {r.campaign_id} batches", total=r.batches) for r in reports}

            def show(report: Any) -> None:
                done = report.states["succeeded"] + report.states["dead"]
                # Planned in parts, a run's batches grow in number as its search reads on.
                bar.update(tasks[report.run_key], completed=done, total=report.batches)

            finished = runner.work(reports, threads=threads, progress=show, processes=count)
            for report in finished:
                show(report)
    _summary(finished, runner, as_json)
    if any(r.states["dead"] or r.planning_dead for r in finished):
        raise typer.Exit(1)  # some batches gave up: `agent runs list --state dead` says which and why
    return finished


def _summary(reports: list[Any], runner: Any, as_json: bool) -> None:
    data = [{"campaign_id": r.campaign_id, "run": r.run_key, "batches": r.batches, "leads": r.leads,
             "batch_states": dict(r.states), "messages": dict(r.statuses),
             **({"planning_dead": r.planning_dead} if r.planning_dead else {})} for r in reports]
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table("campaign", "run", "leads", "batches", "messages", title="campaign summary")
    for row in data:
        table.add_row(row["campaign_id"], row["run"], str(row["leads"]),
                      ", ".join(f"{k} {v}" for k, v in sorted(row["batch_states"].items())) or "-",
                      ", ".join(f"{k} {v}" for k, v in sorted(row["messages"].items())) or "-")
    console.print(table)
    outbox = runner.settings.resolved_outbox_dir
    console.print(Text(f"Delivery writes .eml files into the outbox only ({outbox}); nothing is sent.",
                       style="dim"))


@campaign_app.command("run")
def campaign_run(file: Path = typer.Argument(..., help="Campaign file (.yaml, .yml or .json)."),
                 threads: int = THREADS, processes: str = PROCESSES, backend: str = BACKEND,
                 as_json: bool = JSON_OPT) -> None:
    """Find the campaign's leads, draft, deliver through the gated outbox; progress and a summary."""
    from agent.campaigns.model import load_campaign
    from agent.campaigns.planning import PLAN_PART

    count = _processes(processes)  # bad input is refused before anything is queued
    campaign = load_campaign(file)
    runner = _runner(backend)
    # Planned in parts: the first batches run while the search reads on.
    report = runner.start(campaign, part_size=PLAN_PART)
    _work(runner, [report], threads, as_json, count)


@campaign_app.command("resume")
def campaign_resume(campaign_id: str = typer.Argument(..., help="The campaign's id."),
                    threads: int = THREADS, processes: str = PROCESSES, backend: str = BACKEND,
                    as_json: bool = JSON_OPT) -> None:
    """Finish what an interrupted run left: every batch still queued, running or failed."""
    count = _processes(processes)
    runner = _runner(backend)
    reports = runner.resume(campaign_id)
    if not reports and not as_json:
        console.print(f"nothing to resume for campaign {campaign_id!r}")
    _work(runner, reports, threads, as_json, count)


@campaign_app.command("tick")
def campaign_tick(file: Path = typer.Argument(..., help="Campaign file (.yaml, .yml or .json)."),
                  threads: int = THREADS, processes: str = PROCESSES, backend: str = BACKEND,
                  as_json: bool = JSON_OPT) -> None:
    """Send the campaign's sequence steps that are due now (follow-ups, and first steps pacing deferred).

    Run it from cron or a scheduler as often as you like: a step queued is leased, a step sent is never
    sent again, and a lead who replied, unsubscribed or bounced is not written to."""
    from agent.campaigns.model import load_campaign

    count = _processes(processes)
    campaign = load_campaign(file)
    runner = _runner(backend)
    reports = runner.follow_ups(campaign)
    if not reports and not as_json:
        console.print(f"no sequence step of campaign {campaign.id!r} is due")
    _work(runner, reports, threads, as_json, count)


@runs_app.command("list")
def runs_list(campaign: str = typer.Option(None, help="Only this campaign's runs."),
              state: str = typer.Option(None, help="queued, running, succeeded, failed or dead."),
              limit: int = typer.Option(50, min=1, max=10_000), as_json: bool = JSON_OPT) -> None:
    """Recent runs, newest first."""
    runs = _runner().audit.list_runs(state=state, campaign_id=campaign, limit=limit)
    if as_json:
        typer.echo(json.dumps([_run_dict(r) for r in runs], indent=2, default=str))
        return
    table = Table("run", "orchestrator", "campaign", "state", "attempts", "updated")
    for run in runs:
        table.add_row(run.run_id, run.orchestrator, run.campaign_id or "", run.state, str(run.attempts),
                      run.updated_at.isoformat(timespec="seconds") if run.updated_at else "")
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(...), as_json: bool = JSON_OPT) -> None:
    """One run: its state, its node envelopes and its failures."""
    from agent.errors import InvalidInput

    audit = _runner().audit
    run = audit.get_run(run_id)
    if run is None:
        raise InvalidInput("run_id", f"no run {run_id!r}")
    envelopes, failures = audit.envelopes(run_id), audit.failures(run_id)
    if as_json:
        typer.echo(json.dumps({"run": _run_dict(run), "envelopes": [e.envelope for e in envelopes],
                               "failures": [f.__dict__ for f in failures]}, indent=2, default=str))
        return
    console.print(Text(f"run {run.run_id}  {run.orchestrator}  {run.state}  attempts {run.attempts}"))
    table = Table("node", "records", "partial", "errors")
    for env in envelopes:
        meta = env.envelope["metadata"]
        table.add_row(env.node or "", str(len(env.envelope["records"])), str(meta["partial"]), str(len(meta["errors"])))
    console.print(table)
    for failure in failures:
        console.print(Text(f"failure: {failure.error_type}: {failure.message}", style="red"))


def trace(message_id: str = typer.Argument(..., help="A delivered message's Message-ID."),
          as_json: bool = JSON_OPT) -> None:
    """Walk provenance from a delivered message back to the lead row it came from."""
    from agent.errors import InvalidInput

    audit = _runner().audit
    message_id = message_id.strip()
    delivery = audit.message(message_id)
    if delivery is None:
        raise InvalidInput("message_id", f"no delivered message {message_id!r} in the audit store")
    chain = audit.lineage(message_id)
    if as_json:
        typer.echo(json.dumps({"message": delivery.__dict__, "lineage": chain}, indent=2, default=str))
        return
    console.print(Text(f"message {message_id} → {delivery.to}  ({delivery.status}, run {delivery.run_id})"))
    for link in chain:
        record, prov = link["record"], link["record"].get("provenance", {})
        label = prov.get("source_id") or record.get("template_id") or link["node"]
        console.print(Text(f"{'  ' * link['depth']}← {link['node']}: {link['hash'][:16]}… {label}"))


def _run_dict(run: Any) -> dict[str, Any]:
    data = dict(run.__dict__)
    data.get("meta", {}).pop("campaign", None)  # the campaign definition is long and shown elsewhere
    return data
