"""``FlatIndex``: exact nearest neighbours over one float32 matrix (the embedded default).

Chosen by ``bench/vector_index.py``: on 100,000 leads an exact scan costs a
few milliseconds, always returns the true top k, and, unlike a graph index,
stays exact and fast when the query's SQL filters leave 1% of the leads.

Rows live in a matrix that grows by doubling; ``ids`` maps row to lead id, and
a sorted copy of the ids turns an allowed-id array into rows with one
``searchsorted``.  A replaced id overwrites its row; a removed id's row is
filled by the last row, so the matrix never has holes.  A scan holds the
index's lock: a writer moving rows about cannot tear it.
"""

from __future__ import annotations

import threading

import numpy as np

from agent.vectors.base import Hit

__all__ = ["FlatIndex"]


class FlatIndex:
    name = "flat"

    def __init__(self, dims: int, *, capacity: int = 1024) -> None:
        self.dims = dims
        self._matrix = np.zeros((max(capacity, 16), dims), dtype=np.float32)
        self._ids = np.zeros(self._matrix.shape[0], dtype=np.int64)
        self._size = 0
        self._row: dict[int, int] = {}
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (sorted ids, their rows)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def ids(self) -> np.ndarray:
        with self._lock:
            return self._ids[: self._size].copy()

    def vector(self, lead_id: int) -> np.ndarray | None:
        with self._lock:
            row = self._row.get(int(lead_id))
            return None if row is None else self._matrix[row].copy()

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dims or len(vectors) != len(ids):
            raise ValueError(f"expected {len(ids)} vectors of {self.dims} numbers, got shape {vectors.shape}")
        with self._lock:
            new = [i for i, lead in enumerate(ids.tolist()) if lead not in self._row]
            self._reserve(self._size + len(new))
            for i, lead in enumerate(ids.tolist()):
                row = self._row.get(lead)
                if row is None:
                    row = self._row[lead] = self._size
                    self._ids[row] = lead
                    self._size += 1
                self._matrix[row] = vectors[i]
            if new:
                self._sorted = None

    def remove(self, ids: np.ndarray) -> None:
        with self._lock:
            for lead in np.asarray(ids, dtype=np.int64).tolist():
                row = self._row.pop(lead, None)
                if row is None:
                    continue
                last = self._size - 1
                if row != last:
                    moved = int(self._ids[last])
                    self._matrix[row] = self._matrix[last]
                    self._ids[row] = moved
                    self._row[moved] = row
                self._size = last
                self._sorted = None

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hit]:
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dims:
            raise ValueError(f"the query has {query.shape[0]} numbers, the index {self.dims}")
        if k <= 0:
            return []
        with self._lock:  # a writer moves rows about: the scan sees one state of the index
            size = self._size
            if allowed is None:
                scores = self._matrix[:size] @ query
                candidates = self._ids[:size].copy()
            else:
                rows = self._rows_of(np.asarray(allowed, dtype=np.int64).reshape(-1))
                scores = self._matrix[rows] @ query
                candidates = self._ids[rows]
        if scores.shape[0] == 0:
            return []
        if k < scores.shape[0]:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(scores.shape[0])
        # Best first; equal scores by lead id, so results are stable.
        order = np.lexsort((candidates[top], -scores[top]))
        best = top[order]
        return [(int(candidates[i]), float(scores[i])) for i in best]

    def _rows_of(self, allowed: np.ndarray) -> np.ndarray:
        """The rows of those allowed ids that the index holds (called under the lock)."""
        if self._sorted is None:
            order = np.argsort(self._ids[: self._size], kind="stable")
            self._sorted = (self._ids[: self._size][order], order)
        sorted_ids, rows = self._sorted
        if sorted_ids.size == 0:
            return sorted_ids
        at = np.searchsorted(sorted_ids, allowed)
        at = np.minimum(at, sorted_ids.size - 1)
        hit = sorted_ids[at] == allowed
        return rows[at[hit]]

    def _reserve(self, size: int) -> None:
        if size <= self._matrix.shape[0]:
            return
        capacity = max(size, self._matrix.shape[0] * 2)
        matrix = np.zeros((capacity, self.dims), dtype=np.float32)
        matrix[: self._size] = self._matrix[: self._size]
        ids = np.zeros(capacity, dtype=np.int64)
        ids[: self._size] = self._ids[: self._size]
        self._matrix, self._ids = matrix, ids
