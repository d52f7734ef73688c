"""Embedders: the semantic all-MiniLM-L6-v2 (optional extra) or a deterministic hashing fallback.

``embedder_for(settings)`` picks by the ``embedder`` setting: ``auto`` (the
semantic model when it is installed, else hashing), ``semantic`` (refused,
naming the setting, when it is not installed) or ``hashing``.
"""

from __future__ import annotations

from agent.embeddings.base import Embedder, lead_text, normalise
from agent.embeddings.hashing import HashingEmbedder
from agent.embeddings.semantic import SemanticEmbedder, semantic_available
from agent.errors import ConfigurationError
from agent.settings import Settings, get_settings

__all__ = ["Embedder", "HashingEmbedder", "SemanticEmbedder", "embedder_for", "lead_text", "normalise",
           "semantic_available"]

_shared: dict[str, Embedder] = {}


def embedder_for(settings: Settings | None = None) -> Embedder:
    """The embedder the settings ask for; one per kind per process (the model loads once)."""
    choice = (settings or get_settings()).embedder
    if choice == "auto":
        choice = "semantic" if semantic_available() else "hashing"
    if choice == "semantic" and not semantic_available():
        raise ConfigurationError("setting embedder: 'semantic' needs the model, which is not installed "
                                 "(pip install torch==2.13.0 && pip install -e '.[semantic]'); "
                                 "use 'hashing' or 'auto'")
    found = _shared.get(choice)
    if found is None:
        found = _shared.setdefault(choice, SemanticEmbedder() if choice == "semantic" else HashingEmbedder())
    return found
