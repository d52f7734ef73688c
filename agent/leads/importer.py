"""CSV lead import: read, map headers, then hand the rows to the lead store.

The file is decoded and parsed in full before anything is written, so a file
that cannot be read changes nothing; bad rows are reported, never fatal.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from agent.errors import InvalidInput
from agent.leads.rows import LEAD_FIELDS, canonical_column
from agent.leads.store import ImportReport, LeadStore
from agent.storage.db import Database

__all__ = ["import_csv", "read_csv_rows"]

MAX_FILE_BYTES = 512 * 1024 * 1024


def read_csv_rows(path: str | Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows keyed by our field names, and the columns that were ignored."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInput("file", f"no such file: {file}")
    if file.stat().st_size > MAX_FILE_BYTES:
        raise InvalidInput("file", f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    data = file.read_bytes()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput("file", f"not UTF-8 text (byte {exc.start})") from None
    try:
        dialect = csv.Sniffer().sniff(content[:4096], delimiters=",;\t|")
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
    ignored = [header[i] for i, c in enumerate(columns) if c not in LEAD_FIELDS]
    try:
        rows = [{c: values[i] for i, c in keep if i < len(values)} for values in reader]
    except csv.Error as exc:
        raise InvalidInput("file", f"malformed CSV at line {reader.line_num}: {exc}") from None
    return rows, ignored


def import_csv(path: str | Path, db: Database, *, tenant: str = "default") -> ImportReport:
    """Import a CSV of leads; the report says what was inserted, updated, refused."""
    rows, ignored = read_csv_rows(path)
    # Line numbers count the header as line 1, as a spreadsheet shows them.
    report = LeadStore(db, tenant=tenant).upsert_rows(rows, first_line=2)
    report.ignored_columns = ignored
    return report
