"""``LeadCatalog``: one tenant's leads held in the process for the search hot path.

Two things a hybrid search does on every query are cheap in memory and slow
in SQL over 100,000 rows (a full scan with ``lower() LIKE`` through a join,
~100 ms; an any-word full-text query ranked by BM25, ~60 ms):

- **filters** (industry, company size, location, title): each column's
  distinct values map to the sorted ids of the leads that have them, so a
  filter tests each distinct value once (a word prefix, as SQL search does:
  "cto" matches "CTO", not "Director") and unions their id arrays;
- **keywords**: an inverted index of the words of each lead's search text
  (name, title, company, industry, locations) scored with BM25 (k1 1.2,
  b 0.75); a query word matches the words it starts ("found" finds
  "founder"), as the SQL full text does.

The catalog reloads when the tenant's ``contacts`` or ``companies`` data
version moves (one point read per query otherwise), the same rule as the
company-name index, so it never serves data an import has changed.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import select

from agent.storage.db import Database
from agent.storage.models import Company, Contact
from agent.storage.versions import read_version

__all__ = ["LeadCatalog", "lead_catalog", "FILTER_COLUMNS"]

_WORD = re.compile(r"\w+", re.UNICODE)
K1, B = 1.2, 0.75
# Filter name -> the catalog columns it reads (location: the contact's or the company's).
FILTER_COLUMNS = {"title": ("title",), "industry": ("industry",), "location": ("location", "company_location"),
                  "company_size": ("company_size",)}
_PREFIX = frozenset({"title", "industry", "location"})  # company_size is matched exactly


class LeadCatalog:
    def __init__(self, db: Database, tenant: str) -> None:
        self.db = db
        self.tenant = tenant
        self._versions: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._state: _State | None = None

    def current(self, conn: Any) -> _State:
        versions = (read_version(conn, self.tenant, "contacts"), read_version(conn, self.tenant, "companies"))
        with self._lock:
            # Version 0: no writer ever bumped it, so nothing cached can be trusted.
            if self._state is None or versions != self._versions or not all(versions):
                self._state = _State.load(conn, self.tenant)
                self._versions = versions
            return self._state


class _State:
    def __init__(self, ids: np.ndarray, columns: dict[str, dict[str, np.ndarray]], vocab: list[str],
                 postings: list[tuple[np.ndarray, np.ndarray]], lengths: np.ndarray) -> None:
        self.ids = ids  # lead ids, ascending; a lead's position in it is its document number
        self.columns = columns
        self.vocab = vocab  # sorted
        self.postings = postings  # per word: (document numbers, term counts)
        self.lengths = lengths
        self.avg_length = float(lengths.mean()) if lengths.size else 0.0

    @classmethod
    def load(cls, conn: Any, tenant: str) -> _State:
        stmt = (select(Contact.id, Contact.title, Contact.location, Contact.search_text, Company.industry,
                       Company.size, Company.location)
                .select_from(Contact).outerjoin(Company, Contact.company_id == Company.id)
                .where(Contact.tenant_id == tenant).order_by(Contact.id))
        ids: list[int] = []
        values: dict[str, dict[str, list[int]]] = {name: defaultdict(list) for name in
                                                   ("title", "location", "industry", "company_size",
                                                    "company_location")}
        words: dict[str, dict[int, int]] = defaultdict(dict)
        lengths: list[int] = []
        for doc, (lead, title, location, text, industry, size, company_location) in enumerate(conn.execute(stmt)):
            ids.append(lead)
            for name, value in (("title", title), ("location", location), ("industry", industry),
                                ("company_size", size), ("company_location", company_location)):
                if value:
                    values[name][value].append(doc)
            tokens = _WORD.findall((text or "").lower())
            lengths.append(len(tokens))
            for token in tokens:
                counts = words[token]
                counts[doc] = counts.get(doc, 0) + 1
        vocab = sorted(words)
        postings = [(np.fromiter(words[w].keys(), dtype=np.int32, count=len(words[w])),
                     np.fromiter(words[w].values(), dtype=np.float32, count=len(words[w]))) for w in vocab]
        columns = {name: {v: np.asarray(docs, dtype=np.int32) for v, docs in by_value.items()}
                   for name, by_value in values.items()}
        return cls(np.asarray(ids, dtype=np.int64), columns, vocab, postings, np.asarray(lengths, dtype=np.float32))

    # -- filters -------------------------------------------------------------------------------
    def filter_docs(self, filters: dict[str, str]) -> np.ndarray | None:
        """Document numbers passing every filter (AND), or None when there is none."""
        result: np.ndarray | None = None
        for name, needle in filters.items():
            if not needle:
                continue
            docs = [self._matching(column, name, needle.lower()) for column in FILTER_COLUMNS[name]]
            found = np.unique(np.concatenate(docs)) if docs else np.empty(0, dtype=np.int32)
            result = found if result is None else np.intersect1d(result, found, assume_unique=True)
        return result

    def _matching(self, column: str, name: str, needle: str) -> np.ndarray:
        hits = [docs for value, docs in self.columns[column].items()
                if (value.lower() == needle if name not in _PREFIX else _word_prefix(value.lower(), needle))]
        return np.concatenate(hits) if hits else np.empty(0, dtype=np.int32)

    def lead_ids(self, docs: np.ndarray) -> np.ndarray:
        return self.ids[docs]

    # -- keywords ------------------------------------------------------------------------------
    def keywords(self, words: list[str], *, allowed: np.ndarray | None, top: int) -> tuple[list[tuple[int, float]], int]:
        """The ``top`` documents by BM25 over ``words`` (each matching the words it starts), within
        ``allowed`` documents when given; and how many documents matched at all."""
        n = len(self.ids)
        if n == 0 or not words:
            return [], 0
        scores = np.zeros(n, dtype=np.float32)
        norm = K1 * (1 - B + B * self.lengths / (self.avg_length or 1.0))
        for word in words:
            start = bisect.bisect_left(self.vocab, word)
            end = bisect.bisect_left(self.vocab, word + "\U0010ffff")
            for index in range(start, end):
                docs, counts = self.postings[index]
                idf = np.log(1 + (n - docs.size + 0.5) / (docs.size + 0.5))
                scores[docs] += idf * counts * (K1 + 1) / (counts + norm[docs])
        if allowed is not None:
            mask = np.zeros(n, dtype=bool)
            mask[allowed] = True
            scores[~mask] = 0
        matched = np.flatnonzero(scores > 0)
        if matched.size == 0:
            return [], 0
        if top < matched.size:
            best = matched[np.argpartition(-scores[matched], top - 1)[:top]]
        else:
            best = matched
        order = best[np.lexsort((self.ids[best], -scores[best]))]
        return [(int(self.ids[d]), float(scores[d])) for d in order], int(matched.size)


def _word_prefix(value: str, needle: str) -> bool:
    return value.startswith(needle) or (" " + needle) in value


_shared: dict[tuple[str, str], LeadCatalog] = {}
_shared_lock = threading.Lock()


def lead_catalog(db: Database, tenant: str) -> LeadCatalog:
    """The process's catalog of this database's tenant (made on first use)."""
    key = (db.url, tenant)
    with _shared_lock:
        found = _shared.get(key)
        if found is None or found.db is not db:
            found = _shared[key] = LeadCatalog(db, tenant)
        return found
