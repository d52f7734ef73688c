"""``HashingEmbedder``: a deterministic, dependency-free embedder (the fallback without the model).

Words, word pairs and the character trigrams of each word are hashed (CRC32,
the same in every process) into ``dims`` signed buckets, weighted by
``1 + log(count)``, then scaled to unit length.  Texts that share words and
word pieces come out close; it knows no synonyms, which is what the semantic
embedder is for.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from agent.embeddings.base import normalise

__all__ = ["HashingEmbedder"]

_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    name = "hashing-v1"
    kind = "hashing"

    def __init__(self, dims: int = 384) -> None:
        if dims < 16:
            raise ValueError("dims must be at least 16")
        self.dims = dims

    def features(self, text: str) -> Counter[str]:
        words = _WORD.findall(text.casefold())
        found: Counter[str] = Counter(f"w:{w}" for w in words)
        found.update(f"b:{a} {b}" for a, b in zip(words, words[1:]))
        for word in words:
            padded = f"<{word}>"
            found.update(f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2))
        return found

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, count in self.features(text).items():
                code = zlib.crc32(feature.encode("utf-8"))
                sign = 1.0 if code & 0x80000000 else -1.0
                out[row, code % self.dims] += sign * (1.0 + math.log(count))
        return normalise(out)
