"""Rich rendering of envelopes and reports for the terminal.

Data (lead fields, column names, reasons) is never read as Rich markup: it
goes in as ``Text``, so a title such as ``[/b]CTO`` prints as typed instead of
crashing the table.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent.leads.store import ImportReport

__all__ = ["leads_table", "delivery_table", "import_summary"]


def _cell(value: Any, style: str = "") -> Text:
    """A table cell shown literally: ``None`` is empty, nothing is parsed as markup."""
    return Text("" if value is None else str(value), style=style)


def leads_table(envelope: dict[str, Any], *, title: str = "Leads") -> Table:
    meta = envelope["metadata"]
    shown = len(envelope["records"])
    caption = Text(f"{shown} of {meta['total_count']} matches · run {meta['run_id'][:8]} · "
                   f"{meta.get('duration_ms') or 0:.1f} ms · strategies: {', '.join(meta.get('strategies', []))}")
    table = Table(title=title, caption=caption, header_style="bold")
    for column in ("#", "Name", "Title", "Company", "Domain", "Location", "Email", "Score"):
        table.add_column(column, overflow="fold")
    for record in envelope["records"]:
        table.add_row(*(_cell(record.get(key)) for key in
                        ("lead_id", "full_name", "title", "company", "domain", "location", "email")),
                      _cell(_score(record.get("match") or {})))
    return table


def _score(match: dict[str, Any]) -> str | None:
    """A fuzzy score as 0-100; a similarity as 0.00-1.00; a fused score with who found the lead."""
    if match.get("fused_score") is not None:
        return f"{match['fused_score']:.4f} {'+'.join(match.get('strategies', []))}"
    score = match.get("score")
    if score is None:
        return None
    return f"{score:.0f}" if score > 1 else f"{score:.2f}"


def delivery_table(envelope: dict[str, Any], *, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for column in ("Lead", "To", "Subject", "Status", "Reason", "Message-ID"):
        table.add_column(column, overflow="fold")
    for r in envelope["records"]:
        style = {"sent": "green", "duplicate": "yellow", "skipped": "dim"}.get(r["status"], "")
        table.add_row(_cell(r["lead_id"]), _cell(r["to"]), _cell(r["subject"]), _cell(r["status"], style),
                      _cell(r.get("reason")), _cell(r.get("message_id")))
    return table


def import_summary(console: Console, report: ImportReport, *, limit: int = 20) -> None:
    console.print(
        f"[bold]{report.total}[/] rows: [green]{report.inserted} inserted[/], "
        f"[yellow]{report.updated} updated[/], {report.unchanged} unchanged, "
        f"[red]{len(report.rejected)} rejected[/], {len(report.duplicates)} duplicate in file; "
        f"companies {report.companies_inserted} new, {report.companies_updated} updated "
        f"({report.duration_s:.2f} s)"
    )
    if report.ignored_columns:
        console.print(Text(f"ignored columns: {', '.join(report.ignored_columns)}"))
    if report.rejected:
        table = Table(title="Rejected rows", header_style="bold red")
        for column in ("Line", "Field", "Reason"):
            table.add_column(column)
        for row in report.rejected[:limit]:
            table.add_row(_cell(row.line), _cell(row.field), _cell(row.reason))
        console.print(table)
        if len(report.rejected) > limit:
            console.print(f"... and {len(report.rejected) - limit} more (use --json for all)")
