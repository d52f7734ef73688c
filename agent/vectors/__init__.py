"""Vector search over leads: a pluggable index and the lead embeddings that feed it.

``FlatIndex`` (exact, numpy) is the embedded default, chosen by
``bench/vector_index.py``; any object with the ``VectorIndex`` methods can
stand in for it.  ``LeadVectors`` keeps one tenant's embeddings in the
database (SQLite or PostgreSQL) and its index level with them.
"""

from agent.vectors.base import Hit, VectorIndex
from agent.vectors.flat import FlatIndex
from agent.vectors.leads import LeadVectors, SyncReport, lead_vectors

__all__ = ["FlatIndex", "Hit", "LeadVectors", "SyncReport", "VectorIndex", "lead_vectors"]
