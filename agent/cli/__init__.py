"""The ``agent`` command line (Typer + Rich).

Every command works on the embedded defaults with no services; ``--json``
prints the raw envelope or report for scripts.  Errors print one line naming
the field and the reason, and exit with status 2 (bad input) or 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from agent.errors import AgentError, InvalidInput

__all__ = ["app", "main"]

app = typer.Typer(help="Outbound sales pipeline: leads, outreach, delivery, audit.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
leads_app = typer.Typer(help="Import and search leads.", no_args_is_help=True)
run_app = typer.Typer(help="Run an orchestrator once.", no_args_is_help=True)
schema_app = typer.Typer(help="Print published JSON Schemas.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(leads_app, name="leads")
app.add_typer(run_app, name="run")
app.add_typer(schema_app, name="schema")
app.add_typer(db_app, name="db")


def _add_commands() -> None:
    from agent.cli.campaign import campaign_app, runs_app, trace
    from agent.cli.drafts import drafts_app
    from agent.cli.flows import flow_app
    from agent.cli.inbound import inbound_app
    from agent.cli.outbox import outbox_app
    from agent.cli.sending import sending_app, sequences_app
    from agent.cli.serve import serve
    from agent.cli.jobs import jobs_app
    from agent.cli.worker import worker

    app.add_typer(flow_app, name="flow")
    app.add_typer(campaign_app, name="campaign")
    app.add_typer(runs_app, name="runs")
    app.command("trace")(trace)
    app.command("worker")(worker)
    app.command("serve")(serve)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(drafts_app, name="drafts")
    app.add_typer(inbound_app, name="inbound")
    app.add_typer(sequences_app, name="sequences")
    app.add_typer(sending_app, name="sending")
    app.add_typer(outbox_app, name="outbox")


_add_commands()

console = Console()
err = Console(stderr=True)

JSON_OPT = typer.Option(False, "--json", help="Print raw JSON instead of a table.")


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def _lead_query(text: Optional[str], **fields: Any) -> dict[str, Any]:
    query = {k: v for k, v in fields.items() if v is not None}
    if text:
        query["text"] = text
    return query


@schema_app.command("envelope")
def schema_envelope() -> None:
    """The JSON Schema of the canonical envelope."""
    from agent.envelope import envelope_json_schema

    _print_json(envelope_json_schema())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the latest migration."""
    from agent.settings import get_settings
    from agent.storage.db import Database

    settings = get_settings()
    db = Database(settings.resolved_database_url)
    db.migrate()
    console.print(f"schema at head: {escape(db.safe_url)}")


@leads_app.command("import")
def leads_import(
    file: Path = typer.Argument(..., help="CSV file with a header row; 'email' is required."),
    index: bool = typer.Option(True, "--index/--no-index",
                               help="Embed the new and changed leads for semantic search now "
                                    "(else the first semantic search does)."),
    as_json: bool = JSON_OPT,
) -> None:
    """Validate, normalise, de-duplicate and upsert leads from a CSV file."""
    from agent.embeddings import embedder_for
    from agent.leads.importer import import_csv
    from agent.settings import get_settings
    from agent.storage.db import Database
    from agent.vectors import lead_vectors

    settings = get_settings()
    db = Database.for_settings(settings)
    report = import_csv(file, db, tenant=settings.tenant)
    indexed = None
    if index and report.changed:
        embedder = embedder_for(settings)
        indexed = {"embedder": embedder.name,
                   **lead_vectors(db, settings.tenant, embedder).sync().to_dict()}
    if as_json:
        _print_json({**report.to_dict(), "indexed": indexed})
        return
    from agent.cli.render import import_summary

    import_summary(console, report)
    if indexed is not None:
        console.print(f"semantic index ({indexed['embedder']}): {indexed['embedded']} leads embedded, "
                      f"{indexed['unchanged']} unchanged")


def _run_lead(text: Optional[str], as_json: bool, **fields: Any) -> None:
    from agent.cli.render import leads_table
    from agent.high_level_agents.orchestrators import LeadOrchestrator

    envelope = LeadOrchestrator().run({"lead_query": _lead_query(text, **fields)})
    if as_json:
        _print_json(envelope)
    else:
        console.print(leads_table(envelope))


def run_lead(
    text: Optional[str] = typer.Argument(None, help='Free text, e.g. "leads at Acme in Berlin".'),
    name: Optional[str] = typer.Option(None, help="Company or person name (fuzzy)."),
    company: Optional[str] = typer.Option(None, help="Company name (fuzzy)."),
    domain: Optional[str] = typer.Option(None, help="Company domain or URL."),
    email: Optional[str] = typer.Option(None),
    title: Optional[str] = typer.Option(None, help="Job title (word prefix)."),
    industry: Optional[str] = typer.Option(None),
    location: Optional[str] = typer.Option(None),
    limit: int = typer.Option(25, min=1, max=500),
    offset: int = typer.Option(0, min=0),
    as_json: bool = JSON_OPT,
) -> None:
    """Run the LeadOrchestrator: filters, fuzzy company name or free text; prints a table."""
    _run_lead(text, as_json, name=name, company=company, domain=domain, email=email, title=title,
              industry=industry, location=location, limit=limit, offset=offset)


# One command, two names: `agent run lead` and `agent leads search`.
run_app.command("lead")(run_lead)
leads_app.command("search")(run_lead)


@app.command("demo")
def demo(as_json: bool = JSON_OPT) -> None:
    """The main job on embedded defaults: find leads, draft, deliver into the outbox."""
    from agent.cli.demo import run_demo

    run_demo(console, as_json=as_json)


def main() -> None:
    """Entry point: usage errors are Typer's; project errors become one clear line."""
    from agent.logs import configure_logging
    from agent.settings import get_settings

    try:
        configure_logging(get_settings().log_level)
        app()
    except AgentError as exc:
        # Messages carry user data (paths, values): never parse them as markup.
        # soft_wrap: a long message stays one line instead of being wrapped at 80 columns.
        err.print(Text.assemble(("error:", "bold red"), f" {exc}"), highlight=False, soft_wrap=True)
        raise SystemExit(2 if isinstance(exc, InvalidInput) else 1) from None


if __name__ == "__main__":
    main()
