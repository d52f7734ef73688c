"""Lead store: bulk, idempotent upserts of companies and contacts.

All rows are validated before anything is written, and the writes of one call
run in one transaction: a bad row is reported and skipped, a database failure
leaves the store as it was.  Writing the same rows twice changes nothing.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from agent.errors import InvalidInput
from agent.leads.rows import clean_lead_row
from agent.storage.bulk import insert_many
from agent.storage.db import Database, bulk_cache
from agent.storage.fulltext import index_new_contacts, max_contact_id
from agent.storage.models import Company, Contact, utcnow
from agent.storage.versions import bump_version
from agent.storage.writer import BackgroundWriter

__all__ = ["LeadStore", "ImportReport", "RejectedRow", "paused_gc"]

CONTACT_FIELDS = ("first_name", "last_name", "title", "phone", "location", "status", "lead_score",
                  "source", "lawful_basis", "consent_source")
COMPANY_FIELDS = ("industry", "size", "location")
# Column order of a new contact's row tuple (built by hand in _sync_contacts: keep in step).
CONTACT_INSERT = ("tenant_id", "email", *CONTACT_FIELDS, "company_id", "search_text")
COMPANY_INSERT = ("tenant_id", "name", "normalized_name", "domain", *COMPANY_FIELDS)
CHUNK = 2000  # rows per IN (...) lookup and per write: well under every backend's parameter limit
FULL_SCAN_ROWS = 5000  # above this many rows, reading the tenant's contacts once is cheaper


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for a bulk load, restoring it however it ends.

    A bulk load allocates millions of short-lived, acyclic objects; the collector
    would rescan every live object many times over for nothing (15% of a
    100k-row import).  Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class RejectedRow:
    line: int
    field: str
    reason: str


@dataclass
class ImportReport:
    """What an import did, row by row where rows were refused."""

    total: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    duplicates: list[RejectedRow] = field(default_factory=list)
    companies_inserted: int = 0
    companies_updated: int = 0
    ignored_columns: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.companies_inserted or self.companies_updated)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _search_text(values: Mapping[str, Any], company: str | None, industry: str | None,
                 company_location: str | None) -> str:
    return " ".join(filter(None, (values["first_name"], values["last_name"], values["title"], company,
                                  industry, values["location"], company_location)))


class LeadStore:
    """Writes leads for one tenant."""

    def __init__(self, db: Database, *, tenant: str = "default") -> None:
        self.db = db
        self.tenant = tenant

    def upsert_rows(self, rows: Iterable[Mapping[str, Any]], *, first_line: int = 1,
                    lines: Iterable[int] | None = None, rejected: Iterable[RejectedRow] = (),
                    source_name: str | None = None) -> ImportReport:
        """Validate, de-duplicate and upsert ``rows``.

        Rows are numbered from ``first_line``, or by ``lines`` when given;
        ``rejected`` are rows already refused upstream, reported with the rest.
        """
        with paused_gc():
            return self._upsert(rows, first_line=first_line, lines=lines, rejected=rejected,
                                source_name=source_name)

    def _upsert(self, rows: Iterable[Mapping[str, Any]], *, first_line: int, lines: Iterable[int] | None,
                rejected: Iterable[RejectedRow], source_name: str | None) -> ImportReport:
        started = time.perf_counter()
        report = ImportReport(rejected=list(rejected))
        report.total = len(report.rejected)
        by_email: dict[str, tuple[int, dict[str, Any]]] = {}
        numbering = itertools.count(first_line) if lines is None else iter(lines)
        for line, raw in zip(numbering, rows):
            if not any(raw.values()):
                continue  # a blank line is no row at all
            report.total += 1
            try:
                row = clean_lead_row(raw)
            except InvalidInput as exc:
                report.rejected.append(RejectedRow(line, exc.field, exc.reason))
                continue
            if row["source"] is None and source_name:
                row["source"] = source_name
            previous = by_email.get(row["email"])
            if previous is not None:
                # The last occurrence wins, so a re-import is stable.
                report.duplicates.append(RejectedRow(previous[0], "email",
                                                     f"same address again on line {line}; line {line} is used"))
            by_email[row["email"]] = (line, row)
        report.rejected.sort(key=lambda r: r.line)
        valid = [row for _, row in by_email.values()]
        if valid:
            # One importer per tenant at a time: companies and contacts are read, then written.
            with self.db.connect(lock=f"agent:leads:{self.tenant}") as conn, bulk_cache(conn):
                before = max_contact_id(conn)
                company_ids = self._sync_companies(conn, valid, report)
                existing = self._existing_contacts(conn, valid)
                writer = BackgroundWriter()
                try:
                    for chunk in _chunks(valid, CHUNK):
                        self._sync_contacts(conn, chunk, company_ids, existing, report, writer)
                finally:
                    writer.join()
                if report.inserted:
                    index_new_contacts(conn, before)
                if report.companies_updated:
                    self._refresh_search_text(conn, company_ids)
                if report.companies_inserted or report.companies_updated:
                    bump_version(conn, self.tenant, "companies")
                if report.inserted or report.updated:
                    bump_version(conn, self.tenant, "contacts")
        report.duration_s = time.perf_counter() - started
        return report

    @staticmethod
    def _company_key(row: Mapping[str, Any]) -> tuple[str, str] | None:
        if row["domain"]:
            return ("domain", row["domain"])
        if row["normalized_company"]:
            return ("name", row["normalized_company"])
        return None

    def _sync_companies(self, conn: Connection, rows: list[dict[str, Any]],
                        report: ImportReport) -> dict[tuple[str, str], tuple[int, dict[str, Any]]]:
        wanted: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = self._company_key(row)
            if key is None:
                continue
            agg = wanted.get(key)
            if agg is None:
                agg = wanted[key] = {"name": row["company"], "normalized_name": row["normalized_company"],
                                     "domain": row["domain"], "industry": None, "size": None, "location": None}
            # The last value a file gives for a company field wins.
            if row["industry"] is not None:
                agg["industry"] = row["industry"]
            if row["size"] is not None:
                agg["size"] = row["size"]
            if row["company_location"] is not None:
                agg["location"] = row["company_location"]

        cols = (Company.id, Company.name, Company.normalized_name, Company.domain, *[
            getattr(Company, f) for f in COMPANY_FIELDS])
        existing = [r._asdict() for r in conn.execute(
            select(*cols).where(Company.tenant_id == self.tenant).order_by(Company.id))]
        by_domain = {r["domain"]: r for r in existing if r["domain"]}
        by_name: dict[str, dict[str, Any]] = {}
        for r in existing:
            by_name.setdefault(r["normalized_name"], r)

        now = utcnow()
        resolved: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        inserts: list[tuple[tuple[str, str], dict[str, Any]]] = []
        updates: list[dict[str, Any]] = []
        # Domain keys first: a name-only row joins the company that a row of the same
        # batch names with a domain, on the first import as on every later one.
        claimed: dict[str, tuple[str, str]] = {}
        aliases: dict[tuple[str, str], tuple[str, str]] = {}
        for key, agg in sorted(wanted.items(), key=lambda item: item[0][0] != "domain"):
            if key[0] == "name" and agg["normalized_name"] in claimed:
                aliases[key] = claimed[agg["normalized_name"]]
                continue
            if key[0] == "domain":
                claimed.setdefault(agg["normalized_name"], key)
            match = by_domain.get(agg["domain"]) if agg["domain"] else by_name.get(agg["normalized_name"])
            if match is None and agg["domain"]:
                # A company first imported without a domain gains one now.
                candidate = by_name.get(agg["normalized_name"])
                if candidate is not None and candidate["domain"] is None:
                    match = candidate
            if match is None:
                inserts.append((key, agg))
                continue
            merged = {f: agg[f] if agg[f] is not None else match[f] for f in COMPANY_FIELDS}
            merged["domain"] = match["domain"] or agg["domain"]
            if any(merged[f] != match[f] for f in (*COMPANY_FIELDS, "domain")):
                updates.append({"_id": match["id"], **{f"b_{k}": v for k, v in merged.items()},
                                "b_updated_at": now})
                match.update(merged, _changed=True)
            resolved[key] = (match["id"], {**match})

        if inserts:
            self._insert_companies(conn, inserts, resolved, now)
            report.companies_inserted += len(inserts)
        for key, target in aliases.items():
            resolved[key] = resolved[target]
        if updates:
            conn.execute(update(Company).where(Company.id == bindparam("_id"))
                         .values(**{f: bindparam(f"b_{f}") for f in (*COMPANY_FIELDS, "domain", "updated_at")}), updates)
            report.companies_updated += len(updates)
        return resolved

    def _insert_companies(self, conn: Connection, inserts: list[tuple[tuple[str, str], dict[str, Any]]],
                          resolved: dict[tuple[str, str], tuple[int, dict[str, Any]]], now: Any) -> None:
        """Insert new companies in bulk, then read their ids back by key."""
        floor = int(conn.execute(select(func.max(Company.id))).scalar() or 0)
        insert_many(conn, Company.__table__, COMPANY_INSERT,
                    [(self.tenant, *(agg[c] for c in COMPANY_INSERT[1:])) for _, agg in inserts],
                    shared={"created_at": now, "updated_at": now})
        new = conn.execute(select(Company.id, Company.domain, Company.normalized_name)
                           .where(Company.tenant_id == self.tenant, Company.id > floor)).all()
        by_domain = {d: i for i, d, _ in new if d}
        by_name = {n: i for i, d, n in new if not d}
        for key, agg in inserts:
            new_id = by_domain[agg["domain"]] if agg["domain"] else by_name[agg["normalized_name"]]
            resolved[key] = (new_id, agg)

    def _refresh_search_text(self, conn: Connection,
                             companies: dict[tuple[str, str], tuple[int, dict[str, Any]]]) -> None:
        """Rewrite the search text of every contact whose company just changed.

        Contacts absent from the file still carry their company's old industry
        or location in ``search_text``; the update trigger re-indexes them.
        """
        changed = {cid: company for cid, company in companies.values() if company.get("_changed")}
        if not changed:
            return
        cols = (Contact.id, Contact.company_id, Contact.first_name, Contact.last_name, Contact.title,
                Contact.location, Contact.search_text)
        updates = []
        for ids in _chunks(list(changed), CHUNK):
            for row in conn.execute(select(*cols).where(Contact.company_id.in_(ids))).mappings():
                company = changed[row["company_id"]]
                text = _search_text(row, company.get("name"), company.get("industry"), company.get("location"))
                if text != row["search_text"]:
                    updates.append({"_id": row["id"], "b_search_text": text})
        if updates:
            conn.execute(update(Contact).where(Contact.id == bindparam("_id"))
                         .values(search_text=bindparam("b_search_text")), updates)

    def _existing_contacts(self, conn: Connection, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Stored contacts for the rows' emails: one scan for big batches, else IN lookups."""
        cols = (Contact.id, Contact.email, Contact.company_id, Contact.search_text,
                *[getattr(Contact, f) for f in CONTACT_FIELDS])
        base = select(*cols).where(Contact.tenant_id == self.tenant)
        if len(rows) > FULL_SCAN_ROWS:
            wanted = {r["email"] for r in rows}
            return {r.email: r._asdict() for r in conn.execute(base) if r.email in wanted}
        found: dict[str, dict[str, Any]] = {}
        for chunk in _chunks(rows, CHUNK):
            stmt = base.where(Contact.email.in_([r["email"] for r in chunk]))
            found.update((r.email, r._asdict()) for r in conn.execute(stmt))
        return found

    def _sync_contacts(self, conn: Connection, rows: list[dict[str, Any]],
                       companies: dict[tuple[str, str], tuple[int, dict[str, Any]]],
                       existing: dict[str, dict[str, Any]], report: ImportReport, writer: BackgroundWriter) -> None:
        now = utcnow()
        inserts: list[tuple[Any, ...]] = []
        updates: list[dict[str, Any]] = []
        for row in rows:
            key = self._company_key(row)
            company_id, company = companies[key] if key else (None, {})
            old = existing.get(row["email"])
            if old is None:
                # A new contact: straight to a row tuple (the hot path of a first import).
                text = " ".join(filter(None, (row["first_name"], row["last_name"], row["title"],
                                              row["company"] or company.get("name"), company.get("industry"),
                                              row["location"], company.get("location"))))
                inserts.append((self.tenant, row["email"], row["first_name"], row["last_name"], row["title"],
                                row["phone"], row["location"], row["status"] or "new", row["lead_score"],
                                row["source"], row["lawful_basis"], row["consent_source"], company_id, text))
                continue
            values = {f: row[f] if row[f] is not None else old[f] for f in CONTACT_FIELDS}
            values["status"] = values["status"] or "new"
            values["company_id"] = company_id if company_id is not None else old["company_id"]
            values["search_text"] = _search_text(values, row["company"] or company.get("name"),
                                                 company.get("industry"), company.get("location"))
            if any(values[f] != old[f] for f in values):
                updates.append({"_id": old["id"], **{f"b_{k}": v for k, v in values.items()},
                                "b_updated_at": now})
            else:
                report.unchanged += 1
        if inserts:
            writer.submit(lambda: insert_many(conn, Contact.__table__, CONTACT_INSERT, inserts,
                                              shared={"created_at": now, "updated_at": now}))
            report.inserted += len(inserts)
        if updates:
            fields = (*CONTACT_FIELDS, "company_id", "search_text", "updated_at")
            stmt = update(Contact).where(Contact.id == bindparam("_id")).values(
                **{f: bindparam(f"b_{f}") for f in fields})
            writer.submit(lambda: conn.execute(stmt, updates))
            report.updated += len(updates)
