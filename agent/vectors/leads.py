"""``LeadVectors``: one tenant's lead embeddings, kept in the database and indexed in the process.

The table ``lead_vectors`` is the truth, shared by every worker on the same
database (SQLite embedded, PostgreSQL in production): one row per (lead,
embedder) with the sha256 of the text it was made from.  Indexing is
incremental both ways:

- ``sync()`` embeds only leads that are new or whose text changed since their
  row was written (an import or an update), and drops rows of leads that are
  gone.  It runs when the tenant's ``contacts`` or ``companies`` data version
  has moved since this process last looked, so a search after an import
  indexes just what the import changed;
- ``index()`` keeps an in-process ``FlatIndex`` level with the table by
  reading the rows above the last row id it has seen (a changed lead's row is
  replaced, so it gets a new id), and reloads whole only when its size and the
  table's disagree (rows deleted, or written out of id order by concurrent
  transactions).

Nothing is downloaded: the embedder is whatever ``agent.embeddings`` gives.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection

from agent.embeddings.base import Embedder, lead_text
from agent.storage.bulk import insert_many
from agent.storage.db import Database
from agent.storage.models import Company, Contact, LeadVectorRow
from agent.storage.versions import bump_version, read_version
from agent.vectors.base import VectorIndex
from agent.vectors.flat import FlatIndex

__all__ = ["LeadVectors", "SyncReport", "lead_vectors"]

EMBED_BATCH = 256
_SCOPE = "lead_vectors"


@dataclass
class SyncReport:
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    stale: int = 0  # changed again while being embedded: left for the next sync
    skipped: bool = False  # nothing changed since the last look: no lead was read

    def to_dict(self) -> dict[str, Any]:
        return {"embedded": self.embedded, "unchanged": self.unchanged, "removed": self.removed,
                "stale": self.stale, "skipped": self.skipped}


_TEXT_COLUMNS = (Contact.id, Contact.title, Contact.location, Company.name.label("company"), Company.industry,
                 Company.size.label("company_size"), Company.location.label("company_location"))


class LeadVectors:
    """The embeddings of one tenant's leads under one embedder, and their in-process index."""

    def __init__(self, db: Database, *, tenant: str, embedder: Embedder,
                 index_factory: Callable[..., VectorIndex] = FlatIndex) -> None:
        self.db = db
        self.tenant = tenant
        self.embedder = embedder
        # Any VectorIndex: called as factory(dims, capacity=n) whenever the index is (re)built.
        self.index_factory = index_factory
        self._seen_versions: tuple[int, int] | None = None
        self._index = index_factory(embedder.dims, capacity=1024)
        self._last_id = 0
        self._index_version: int | None = None
        self._sync_lock = threading.Lock()
        self._index_lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------
    def sync(self, *, force: bool = False,
             progress: Callable[[int, int], None] | None = None) -> SyncReport:
        """Embed the leads that are new or changed; forget the ones that are gone."""
        with self._sync_lock:
            with self.db.connect() as conn:
                versions = (read_version(conn, self.tenant, "contacts"), read_version(conn, self.tenant, "companies"))
                if not force and versions == self._seen_versions and all(versions):
                    return SyncReport(skipped=True)
                texts = {row.id: lead_text(row._mapping) for row in conn.execute(
                    select(*_TEXT_COLUMNS).outerjoin(Company, Contact.company_id == Company.id)
                    .where(Contact.tenant_id == self.tenant))}
                stored = dict(conn.execute(
                    select(LeadVectorRow.contact_id, LeadVectorRow.text_sha)
                    .where(LeadVectorRow.tenant_id == self.tenant, LeadVectorRow.embedder == self.embedder.name)).all())
            shas = {lead: _sha(text) for lead, text in texts.items()}
            changed = [lead for lead, sha in shas.items() if stored.get(lead) != sha]
            gone = [lead for lead in stored if lead not in texts]
            report = SyncReport(unchanged=len(texts) - len(changed), removed=len(gone))
            for chunk in _chunks(changed, EMBED_BATCH):
                vectors = self.embedder.embed([texts[lead] for lead in chunk])
                written = self._write(chunk, [shas[lead] for lead in chunk], vectors)
                report.embedded += written
                report.stale += len(chunk) - written
                if progress is not None:
                    progress(report.embedded, len(changed))
            with self.db.connect(lock=f"agent:vectors:{self.tenant}") as conn:
                for chunk in _chunks(gone, 500):
                    conn.execute(delete(LeadVectorRow).where(LeadVectorRow.embedder == self.embedder.name,
                                                             LeadVectorRow.contact_id.in_(chunk)))
                # Readers re-check their index against the table: a cascade may have removed rows.
                bump_version(conn, self.tenant, _SCOPE)
            # A lead changed while this ran (stale, not written) is embedded by the next sync.
            self._seen_versions = versions if not report.stale else None
            return report

    def _write(self, leads: list[int], shas: list[str], vectors: np.ndarray) -> int:
        """Store these vectors, but only for leads whose text is still the one embedded: a lead changed
        since it was read is left for the next sync, never given a stale vector.  Returns how many."""
        blobs = [np.ascontiguousarray(v, dtype="<f4").tobytes() for v in vectors]
        with self.db.connect(lock=f"agent:vectors:{self.tenant}") as conn:
            current = {row.id: _sha(lead_text(row._mapping)) for row in conn.execute(
                select(*_TEXT_COLUMNS).outerjoin(Company, Contact.company_id == Company.id)
                .where(Contact.tenant_id == self.tenant, Contact.id.in_(leads)))}
            rows = [(lead, sha, blob) for lead, sha, blob in zip(leads, shas, blobs) if current.get(lead) == sha]
            if not rows:
                return 0
            # Replaced, not updated: the new row's higher id is how other processes' indexes see it.
            conn.execute(delete(LeadVectorRow).where(LeadVectorRow.embedder == self.embedder.name,
                                                     LeadVectorRow.contact_id.in_([r[0] for r in rows])))
            insert_many(conn, LeadVectorRow.__table__, ("contact_id", "text_sha", "vector"), rows,
                        shared={"tenant_id": self.tenant, "embedder": self.embedder.name})
            bump_version(conn, self.tenant, _SCOPE)
            return len(rows)

    # -- reading -------------------------------------------------------------------------------
    def index(self, conn: Connection | None = None) -> VectorIndex:
        """The in-process index, brought level with the table first (one point read when it is)."""
        if conn is None:
            with self.db.connect() as own:
                return self.index(own)
        with self._index_lock:
            version = read_version(conn, self.tenant, _SCOPE)
            if version == self._index_version and version:
                return self._index
            self._catch_up(conn)
            count = self._count(conn)
            if count != len(self._index):
                self._index, self._last_id = self.index_factory(self.embedder.dims, capacity=count), 0
                self._catch_up(conn)
            self._index_version = version
            return self._index

    def _catch_up(self, conn: Connection) -> None:
        stmt = (select(LeadVectorRow.id, LeadVectorRow.contact_id, LeadVectorRow.vector)
                .where(LeadVectorRow.tenant_id == self.tenant, LeadVectorRow.embedder == self.embedder.name,
                       LeadVectorRow.id > self._last_id)
                .order_by(LeadVectorRow.id))
        for rows in _row_chunks(conn.execute(stmt), 4096):
            ids = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            matrix = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), -1)
            self._index.upsert(ids, matrix)
            self._last_id = max(self._last_id, rows[-1][0])

    def _count(self, conn: Connection) -> int:
        return int(conn.execute(select(func.count()).select_from(LeadVectorRow).where(
            LeadVectorRow.tenant_id == self.tenant, LeadVectorRow.embedder == self.embedder.name)).scalar_one())


_shared: dict[tuple[str, str, str], LeadVectors] = {}
_shared_lock = threading.Lock()


def lead_vectors(db: Database, tenant: str, embedder: Embedder) -> LeadVectors:
    """The process's ``LeadVectors`` for this database, tenant and embedder (made on first use)."""
    key = (db.url, tenant, embedder.name)
    with _shared_lock:
        found = _shared.get(key)
        if found is None or found.db is not db:
            found = _shared[key] = LeadVectors(db, tenant=tenant, embedder=embedder)
        return found


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row_chunks(result: Any, size: int) -> Iterator[list[Any]]:
    while True:
        rows = result.fetchmany(size)
        if not rows:
            return
        yield rows
