"""Lead search over the SQL store: filters, fuzzy company names, full text.

Fuzzy company matching runs in process with rapidfuzz over a per-tenant
index of normalised company names, reloaded only when the companies table
changes.  Full text uses SQLite FTS5 or PostgreSQL ``tsvector``.
``total`` is always the true number of matches, whatever the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz
import numpy as np
from sqlalchemy import Select, and_, bindparam, false, func, or_, select, text
from sqlalchemy.sql.elements import ColumnElement

from agent.errors import PayloadError
from agent.leads.catalog import FILTER_COLUMNS, lead_catalog
from agent.leads.company_index import CompanyNameIndex
from agent.leads.normalize import registrable_domain
from agent.leads.query import FILLER, LeadQuery, parse_free_text
from agent.storage.db import Database
from agent.storage.models import Company, Contact

__all__ = ["LeadSearch", "SearchResult"]

_TOKEN = re.compile(r"\w+", re.UNICODE)
# Words too common to rank by (beside the query filler words of agent.leads.query).
_STOPWORDS = frozenset("""and or of in on at to for with by from the a an is are be who that this
hiring hire looking need needs want like""".split())


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    total: int | None  # None for a keyset page (``after_id``): counting every match would read them all
    query: dict[str, Any]
    strategies: list[str] = field(default_factory=list)


class LeadSearch:
    """Runs a ``LeadQuery`` against one tenant's leads."""

    def __init__(self, db: Database, *, tenant: str = "default", fuzzy_cutoff: float = 80.0) -> None:
        self.db = db
        self.tenant = tenant
        self.fuzzy_cutoff = fuzzy_cutoff
        self.companies = CompanyNameIndex(db, tenant)

    def effective_query(self, query: LeadQuery) -> LeadQuery:
        """Explicit fields win; free text fills only the fields left empty."""
        if not query.text:
            return query
        parsed = parse_free_text(query.text)
        updates = {k: v for k, v in parsed.items() if k == "text" or getattr(query, k) is None}
        updates.setdefault("text", None)
        return query.model_copy(update=updates)

    def search(self, query: LeadQuery) -> SearchResult:
        if query.keywords and query.text:
            return self.keyword_search(query)
        q = self.effective_query(query)
        strategies: list[str] = []
        conditions: list[ColumnElement[bool]] = [Contact.tenant_id == self.tenant]
        scores: dict[int, float] | None = None
        person: str | None = None
        cutoff = q.min_score if q.min_score is not None else self.fuzzy_cutoff
        if q.after_id is not None:
            if q.company or q.name:
                raise PayloadError("lead_query.after_id", "cannot page a name or company search by id "
                                                          "(its order is the fuzzy score); use offset")
            if q.offset:
                raise PayloadError("lead_query.after_id", "cannot be combined with offset")
            conditions.append(Contact.id > q.after_id)

        with self.db.connect() as conn:
            if q.company or q.name:
                scores = self.companies.match(conn, q.company or q.name or "", cutoff)
                strategies.append("fuzzy_company")
            if q.company:
                conditions.append(Contact.company_id.in_(list(scores or {})) if scores else false())
            if q.name:
                # Alone, a name may be a company or a person; beside ``company`` it is a person.
                # The full-text index narrows the people; _ranked_by_score checks the name exactly.
                person = q.name.lower()
                by_person, _ = self._full_text(q.name)
                if q.company or not scores:
                    conditions.append(by_person)
                else:
                    conditions.append(or_(Contact.company_id.in_(list(scores)), by_person))
                strategies.append("person_name")
            if q.domain:
                domain = registrable_domain(q.domain)
                if domain is None:
                    raise PayloadError("lead_query.domain", f"not a domain name: {q.domain!r}")
                conditions.append(Company.domain == domain)
                strategies.append("domain")
            if q.email:
                conditions.append(Contact.email == q.email.strip().lower())
                strategies.append("email")
            if q.company_size:
                conditions.append(Company.size == q.company_size)
                strategies.append("company_size")
            for value, columns, label in (
                (q.title, (Contact.title,), "title"),
                (q.industry, (Company.industry,), "industry"),
                (q.location, (Contact.location, Company.location), "location"),
            ):
                if value:
                    conditions.append(or_(*(_word_prefix(c, value, self.db.dialect) for c in columns)))
                    strategies.append(label)
            rank: Any = None
            if q.text:
                fts, rank = self._full_text(q.text)
                conditions.append(fts)
                strategies.append("full_text")

            base = select(Contact.id).select_from(Contact).outerjoin(Company, Contact.company_id == Company.id)
            where = and_(*conditions)
            if scores is not None:
                page_ids, score_of, total = self._ranked_by_score(
                    conn, base, where, scores, person, q, person_required=bool(q.company and q.name))
            elif q.after_id is not None:
                # One read from where the last page ended, no count: paging costs one pass in all.
                total = None
                page_ids = list(conn.execute(base.where(where).order_by(Contact.id).limit(q.limit)).scalars())
                score_of = {}
            else:
                total = conn.execute(select(func.count()).select_from(base.where(where).subquery())).scalar_one()
                order = [rank, Contact.id] if rank is not None else [Contact.id]
                page_ids = list(conn.execute(base.where(where).order_by(*order)
                                             .limit(q.limit).offset(q.offset)).scalars())
                score_of = {}
            # Ids alone for a planner that loads the leads later; else the lead records.
            rows = [{"lead_id": i} for i in page_ids] if q.ids_only else self.load(conn, page_ids)
        for row in rows:
            row["match"] = {"strategies": strategies, "score": score_of.get(row["lead_id"])}
        return SearchResult(rows=rows, total=None if total is None else int(total),
                            query=q.model_dump(exclude_none=True),
                            strategies=strategies)

    def _full_text(self, text_query: str) -> tuple[ColumnElement[bool], Any]:
        tokens = _TOKEN.findall(text_query.lower())
        if not tokens:
            return false(), None
        if self.db.dialect == "sqlite":
            expr = " ".join(f'"{t}"*' for t in tokens)
            matched = text("SELECT rowid FROM contacts_fts WHERE contacts_fts MATCH :fts").bindparams(fts=expr)
            return Contact.id.in_(matched), None
        tsquery = func.to_tsquery("simple", " & ".join(f"{t}:*" for t in tokens))
        vector = func.to_tsvector("simple", Contact.search_text)
        return vector.op("@@")(tsquery), func.ts_rank(vector, tsquery).desc()

    def _ranked_by_score(self, conn: Any, base: Select, where: Any, scores: dict[int, float],
                         person: str | None, q: LeadQuery, *,
                         person_required: bool) -> tuple[list[int], dict[int, float], int]:
        stmt = base.add_columns(Contact.company_id, Contact.first_name, Contact.last_name).where(where)
        scored: list[tuple[float, int]] = []
        for contact_id, company_id, first, last in conn.execute(stmt):
            score = scores.get(company_id)
            if person:
                full = f"{first or ''} {last or ''}".strip().lower()
                if person in full:
                    score = max(score or 0.0, round(fuzz.ratio(person, full), 1), 90.0)
                elif person_required:
                    continue
            if score is None:
                continue  # passed the full-text pre-filter, but neither the company nor the name matches
            scored.append((score, contact_id))
        scored.sort(key=lambda item: (-item[0], item[1]))
        page = scored[q.offset : q.offset + q.limit]
        return [cid for _, cid in page], {cid: s for s, cid in page}, len(scored)

    def filtered_ids(self, conn: Any, query: LeadQuery) -> np.ndarray | None:
        """Every lead id passing the query's filters (industry, company size, location, title), or
        None when it has none: the candidates a semantic search ranks.  Free text is not a filter here.
        Evaluated on the tenant's in-process ``LeadCatalog``, with the same word-prefix rule as SQL."""
        catalog = lead_catalog(self.db, self.tenant).current(conn)
        docs = catalog.filter_docs(_filters_of(query))
        return None if docs is None else catalog.lead_ids(docs)

    def keyword_search(self, query: LeadQuery) -> SearchResult:
        """Free text as ranked keywords: leads with any of its words (prefixes), best first by BM25,
        within the query's filters (on the tenant's in-process ``LeadCatalog``, the same on SQLite and
        PostgreSQL).  The text is not parsed into filters: this is the lexical half of a hybrid search."""
        if query.after_id is not None:
            raise PayloadError("lead_query.after_id", "cannot page a keyword search by id (its order is "
                                                      "the rank); use offset")
        words = [w for w in dict.fromkeys(_TOKEN.findall((query.text or "").lower()))
                 if w not in FILLER and w not in _STOPWORDS and len(w) > 1][:32]
        strategies = ["full_text"]  # ranked, any word
        with self.db.connect() as conn:
            catalog = lead_catalog(self.db, self.tenant).current(conn)
            allowed = catalog.filter_docs(_filters_of(query.with_place()))
            ranked, total = catalog.keywords(words, allowed=allowed, top=query.offset + query.limit)
            page = ranked[query.offset:]
            ids = [lead for lead, _ in page]
            rows = [{"lead_id": i} for i in ids] if query.ids_only else self.load(conn, ids)
        score_of = {lead: round(score, 4) for lead, score in page}
        for row in rows:
            row["match"] = {"strategies": strategies, "score": score_of[row["lead_id"]]}
        return SearchResult(rows=rows, total=total, query=query.model_dump(exclude_none=True),
                            strategies=strategies)

    def load(self, conn: Any, ids: list[int]) -> list[dict[str, Any]]:
        """Lead records for ``ids``, in the order given."""
        if not ids:
            return []
        by_id: dict[int, dict[str, Any]] = {}
        for row in conn.execute(_LOAD_RECORDS, {"ids": ids}).mappings():
            record = dict(row)
            record["full_name"] = " ".join(p for p in (row["first_name"], row["last_name"]) if p) or None
            record["updated_at"] = row["updated_at"].isoformat() if row["updated_at"] else None
            by_id[row["lead_id"]] = record
        return [by_id[i] for i in ids if i in by_id]


def _filters_of(query: LeadQuery) -> dict[str, str]:
    return {name: getattr(query, name) for name in FILTER_COLUMNS if getattr(query, name)}


def _word_prefix(column: Any, value: str, dialect: str) -> ColumnElement[bool]:
    """``value`` starts a word of ``column``: "cto" matches "CTO", not "Director".

    For an ASCII needle SQLite's own lower() gives the same matches and runs in
    C; only a non-ASCII needle needs the Unicode-aware ``agent_lower``.
    """
    low = func.agent_lower(column) if dialect == "sqlite" and not value.isascii() else func.lower(column)
    needle = value.lower()
    return or_(low.startswith(needle, autoescape=True), low.contains(" " + needle, autoescape=True))


# The columns of a lead record, labelled with the record's field names.
_RECORD_COLUMNS = (
    Contact.id.label("lead_id"), Contact.email, Contact.first_name, Contact.last_name, Contact.title,
    Contact.phone, Contact.location, Contact.status, Contact.lead_score, Contact.lawful_basis,
    Contact.consent_source, Company.id.label("company_id"), Company.name.label("company"), Company.domain,
    Company.industry, Company.size.label("company_size"), Company.location.label("company_location"),
    Contact.updated_at,
)
_LOAD_RECORDS = (
    select(*_RECORD_COLUMNS)
    .select_from(Contact)
    .outerjoin(Company, Contact.company_id == Company.id)
    .where(Contact.id.in_(bindparam("ids", expanding=True)))
)
