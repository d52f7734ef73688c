"""Embedders: the deterministic hashing fallback, the offline semantic model, and choosing one."""

from __future__ import annotations

import json
import subprocess
import sys
import unittest
from unittest import mock

import numpy as np

from agent.embeddings import HashingEmbedder, SemanticEmbedder, embedder_for, lead_text, semantic_available
from agent.errors import ConfigurationError
from agent.settings import get_settings
from tests.support import USE_REAL_TESTS

QUERY = "fintech startups in Berlin hiring sales people"
NEAR = "Head of Sales · Kontofix GmbH · Fintech · 11-50 · Berlin"
FAR = "Plant Manager · Ohio Castings Inc · Manufacturing · 1001-5000 · Cleveland"


class HashingEmbedderTest(unittest.TestCase):
    def test_vectors_are_unit_length_and_the_same_in_every_process(self) -> None:
        # Given the same texts embedded here and in another process
        texts = [NEAR, FAR, ""]
        here = HashingEmbedder().embed(texts)
        code = ("import json; from agent.embeddings import HashingEmbedder; "
                f"print(json.dumps(HashingEmbedder().embed({texts!r}).tolist()))")
        there = np.array(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                   check=True).stdout), dtype=np.float32)
        # Then they are equal, unit length (an empty text: zero), float32, 384 wide
        np.testing.assert_allclose(here, there, rtol=0, atol=1e-6)
        self.assertEqual((here.shape, here.dtype), ((3, 384), np.float32))
        np.testing.assert_allclose(np.linalg.norm(here[:2], axis=1), [1.0, 1.0], atol=1e-5)
        self.assertEqual(float(np.abs(here[2]).sum()), 0.0)

    def test_texts_sharing_words_are_closer_than_unrelated_ones(self) -> None:
        query, near, far = HashingEmbedder().embed(["sales in Berlin fintech", NEAR, FAR])
        self.assertGreater(float(query @ near), float(query @ far) + 0.1)


@unittest.skipUnless(semantic_available() or USE_REAL_TESTS, "the semantic extra is not installed")
class SemanticEmbedderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.embedder = SemanticEmbedder()

    def test_the_model_comes_from_the_installed_package_and_meaning_counts(self) -> None:
        # Given the bundled model (no download: its files are inside the package)
        self.assertTrue((self.embedder.model_path / "model.safetensors").is_file())
        # When a query is embedded beside a matching lead and an unrelated one, with no shared word
        query, near, far = self.embedder.embed([QUERY, NEAR, FAR])
        # Then the meaning decides, on unit vectors of 384 numbers
        self.assertEqual(query.shape, (384,))
        self.assertAlmostEqual(float(np.linalg.norm(query)), 1.0, places=4)
        self.assertGreater(float(query @ near), float(query @ far) + 0.1)


class ChoosingTest(unittest.TestCase):
    def test_auto_takes_the_semantic_model_when_installed_else_hashing(self) -> None:
        chosen = embedder_for(get_settings(embedder="auto"))
        self.assertEqual(chosen.kind, "semantic" if semantic_available() else "hashing")
        self.assertEqual(embedder_for(get_settings(embedder="hashing")).name, "hashing-v1")

    def test_semantic_without_the_model_is_refused_naming_the_setting(self) -> None:
        with mock.patch("agent.embeddings.semantic_available", return_value=False), \
                self.assertRaises(ConfigurationError) as caught:
            embedder_for(get_settings(embedder="semantic"))
        self.assertIn("setting embedder", str(caught.exception))

    def test_a_lead_is_embedded_as_who_where_and_what(self) -> None:
        lead = {"title": "Head of Sales", "company": "Kontofix GmbH", "industry": "Fintech", "location": "Berlin",
                "company_location": "Berlin", "email": "a@b.example"}
        self.assertEqual(lead_text(lead), "Head of Sales · Kontofix GmbH · Fintech · Berlin")


if __name__ == "__main__":
    unittest.main()
