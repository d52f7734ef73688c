"""Where ``LLMClient`` keeps answers, keyed by the prompt's hash.

``MemoryCache``: this process only, the newest ``size`` answers.  ``SqlCache``:
the ``llm_cache`` table of a database (SQLite or PostgreSQL), shared by every
worker, with ``prune(older_than=...)``.  A cache keeps the answer's text, its
model, usage and what it cost when it was paid for; a structured answer is
validated again when it is read, so a schema change never serves a stale shape.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from sqlalchemy import delete, select

from agent.storage.db import Database, upsert_insert
from agent.storage.models import LLMCacheRow

__all__ = ["Cached", "LLMCache", "MemoryCache", "SqlCache"]

_TABLE = LLMCacheRow.__table__


class Cached(tuple):  # type: ignore[type-arg]
    """``(model, text, usage, cost)`` of a kept answer."""

    __slots__ = ()

    def __new__(cls, model: str, text: str, usage: dict[str, int], cost: float) -> Cached:
        return super().__new__(cls, (model, text, usage, cost))

    model = property(lambda self: self[0])
    text = property(lambda self: self[1])
    usage = property(lambda self: self[2])
    cost = property(lambda self: self[3])


class LLMCache(Protocol):
    def get(self, key: str) -> Cached | None: ...

    def put(self, key: str, answer: Cached) -> None: ...


class MemoryCache:
    """The newest ``size`` answers of this process."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._items: OrderedDict[str, Cached] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Cached | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, answer: Cached) -> None:
        with self._lock:
            self._items[key] = answer
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class SqlCache:
    """Answers in the ``llm_cache`` table of ``db`` (a ``Database`` or a URL)."""

    def __init__(self, db: Database | str) -> None:
        self.db = Database(db) if isinstance(db, str) else db
        self.db.migrate()
        self._insert: Any = upsert_insert(self.db.dialect)

    def get(self, key: str) -> Cached | None:
        with self.db.connect() as conn:
            row = conn.execute(select(_TABLE.c.model, _TABLE.c.text, _TABLE.c.usage_json, _TABLE.c.cost)
                               .where(_TABLE.c.prompt_hash == key)).first()
        return None if row is None else Cached(row.model, row.text, json.loads(row.usage_json), row.cost)

    def put(self, key: str, answer: Cached) -> None:
        values = {"prompt_hash": key, "model": answer.model, "text": answer.text,
                  "usage_json": json.dumps(answer.usage), "cost": answer.cost,
                  "created_at": datetime.now(timezone.utc)}
        with self.db.connect(write=True) as conn:
            if self._insert is None:  # another database: the newest answer replaces the one kept
                conn.execute(delete(_TABLE).where(_TABLE.c.prompt_hash == key))
                conn.execute(_TABLE.insert().values(values))
                return
            # The newest answer wins: one kept before that no longer validates is replaced, not kept forever.
            insert = self._insert(_TABLE).values(values)
            conn.execute(insert.on_conflict_do_update(
                index_elements=["prompt_hash"], set_={k: insert.excluded[k] for k in values if k != "prompt_hash"}))

    def prune(self, *, older_than: timedelta, now: datetime | None = None) -> int:
        """Forget answers kept more than ``older_than`` ago; how many."""
        cutoff = (now or datetime.now(timezone.utc)) - older_than
        with self.db.connect(write=True) as conn:
            return int(conn.execute(delete(_TABLE).where(_TABLE.c.created_at < cutoff)).rowcount or 0)
