"""CSV lead import: read, map headers, then hand the rows to the lead store.

The file is decoded and parsed in full before anything is written, so a file
that cannot be read changes nothing; bad rows are reported, never fatal.
Rows are numbered by the physical line they start on, as an editor shows it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import InvalidInput
from agent.leads.rows import LEAD_FIELDS, canonical_column
from agent.leads.store import ImportReport, LeadStore, RejectedRow, paused_gc
from agent.storage.db import Database

__all__ = ["import_csv", "read_csv", "read_csv_rows", "CsvContent"]

MAX_FILE_BYTES = 512 * 1024 * 1024


@dataclass
class CsvContent:
    """Rows keyed by our field names, the line each starts on, and what was set aside."""

    rows: list[dict[str, str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)


def _read_text(file: Path) -> str:
    try:
        if not file.is_file():
            raise InvalidInput("file", f"no such file: {file}")
        if file.stat().st_size > MAX_FILE_BYTES:
            raise InvalidInput("file", f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        data = file.read_bytes()
    except OSError as exc:
        raise InvalidInput("file", f"cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("file", f"not UTF-8 text (byte {exc.start})") from None


def read_csv(path: str | Path) -> CsvContent:
    """Parse the whole file; file-level problems raise ``InvalidInput`` naming ``file``."""
    content = _read_text(Path(path))
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(content[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(content, newline=""), dialect)
    header = next(reader, None)
    if not header:
        raise InvalidInput("file", "is empty: a header row is required")
    columns = [canonical_column(h) for h in header]
    if "email" not in columns:
        raise InvalidInput("email", "column is missing (expected a header such as 'email')")
    dupes = {c for c in columns if columns.count(c) > 1 and c in LEAD_FIELDS}
    if dupes:
        raise InvalidInput(sorted(dupes)[0], "column appears more than once")
    keep = [(i, c) for i, c in enumerate(columns) if c in LEAD_FIELDS]
    names = [c for _, c in keep]
    keep_all = len(keep) == len(columns)  # the common case: every column is ours
    out = CsvContent(ignored_columns=[header[i] for i, c in enumerate(columns) if c not in LEAD_FIELDS])
    start = reader.line_num + 1
    try:
        for values in reader:
            line, start = start, reader.line_num + 1
            if not any(v.strip() for v in values):
                continue  # a blank line is no row
            if len(values) != len(header):
                # A stray comma shifts every later column: refuse the row rather than guess.
                out.rejected.append(RejectedRow(line, "row", f"has {len(values)} fields, the header has {len(header)}"))
                continue
            out.rows.append(dict(zip(names, values)) if keep_all else {c: values[i] for i, c in keep})
            out.lines.append(line)
    except csv.Error as exc:
        raise InvalidInput("file", f"malformed CSV at line {reader.line_num}: {exc}") from None
    return out


def read_csv_rows(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows keyed by our field names, and the columns that were ignored."""
    content = read_csv(path)
    return content.rows, content.ignored_columns


def import_csv(path: str | Path, db: Database, *, tenant: str = "default") -> ImportReport:
    """Import a CSV of leads; the report says what was inserted, updated, refused."""
    with paused_gc():
        content = read_csv(path)
        report = LeadStore(db, tenant=tenant).upsert_rows(content.rows, lines=content.lines,
                                                          rejected=content.rejected)
    report.ignored_columns = content.ignored_columns
    return report
