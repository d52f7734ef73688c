"""The vector index contract: lead ids with unit vectors in, the nearest ids out.

An index holds one embedder's vectors for one tenant.  ``search`` takes an
optional array of allowed ids: a query's filters (industry, size, location,
title) are resolved in SQL first, and the index ranks only the leads that
passed them, so a filter never hides a match behind a ``k`` cut-off.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["VectorIndex", "Hit"]

Hit = tuple[int, float]  # (lead id, cosine similarity)


class VectorIndex(Protocol):
    name: str
    dims: int

    def __len__(self) -> int: ...

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add these ids' vectors, replacing any the index already holds for them."""

    def ids(self) -> np.ndarray:
        """Every id the index holds."""

    def remove(self, ids: np.ndarray) -> None:
        """Forget these ids (unknown ids are ignored)."""

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hit]:
        """The ``k`` ids most similar to ``query``, best first; only ids in ``allowed`` when given."""
