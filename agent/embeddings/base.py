"""The embedder contract: texts in, unit-length vectors out, and a name that says which ran."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["Embedder", "lead_text", "normalise"]


class Embedder(Protocol):
    """Turns texts into L2-normalised ``float32`` vectors of ``dims`` numbers (a dot product is the
    cosine similarity).  ``name`` and ``kind`` ("semantic" or "hashing") go into envelope metadata,
    so a result always says which embedder made it."""

    name: str
    kind: str
    dims: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def lead_text(lead: Mapping[str, Any]) -> str:
    """The text a lead is embedded as: who, where they work, what the company does, where."""
    parts = [str(lead[k]) for k in ("title", "company", "industry", "company_size", "location", "company_location")
             if lead.get(k)]
    return " · ".join(dict.fromkeys(parts))
