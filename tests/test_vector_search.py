"""Vector search: the flat index, lead embeddings kept level with the store, semantic and hybrid search.

The search suites run on the embedded SQLite default and on PostgreSQL, with
the hashing embedder (fast and deterministic); one class runs the semantic
model on the query the issue names.
"""

from __future__ import annotations

import unittest

import numpy as np

from agent.embeddings import HashingEmbedder, embedder_for, semantic_available
from agent.embeddings.base import lead_text, normalise
from agent.high_level_agents.orchestrators import LeadOrchestrator
from agent.leads.sample import generate_leads
from agent.leads.store import LeadStore
from agent.vectors import FlatIndex, LeadVectors, lead_vectors
from tests.support import PostgresSchema, TempHome, requires_real_services

SAMPLE = generate_leads(2000)


class FlatIndexTest(unittest.TestCase):
    def setUp(self) -> None:
        rng = np.random.default_rng(3)
        self.vectors = normalise(rng.standard_normal((300, 16)).astype(np.float32))
        self.ids = np.arange(1000, 1300, dtype=np.int64)
        self.index = FlatIndex(16, capacity=16)  # grows several times while filling
        self.index.upsert(self.ids, self.vectors)

    def exact(self, query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> list[int]:
        scores = vectors.astype(np.float64) @ query.astype(np.float64)
        return [int(ids[i]) for i in np.argsort(-scores, kind="stable")[:k]]

    def test_search_returns_the_exact_top_k_best_first(self) -> None:
        query = self.vectors[17]
        hits = self.index.search(query, 10)
        self.assertEqual([h[0] for h in hits], self.exact(query, self.ids, self.vectors, 10))
        self.assertEqual(hits[0][0], 1017)
        self.assertAlmostEqual(hits[0][1], 1.0, places=5)
        self.assertEqual([h[1] for h in hits], sorted((h[1] for h in hits), reverse=True))

    def test_allowed_ids_restrict_the_ranking_and_unknown_ids_are_ignored(self) -> None:
        allowed = np.array([1299, 1005, 1100, 5, 99999], dtype=np.int64)
        hits = self.index.search(self.vectors[0], 10, allowed)
        self.assertEqual(sorted(h[0] for h in hits), [1005, 1100, 1299])
        self.assertEqual(self.index.search(self.vectors[0], 10, np.array([], dtype=np.int64)), [])

    def test_replacing_and_removing_keep_every_other_vector_in_place(self) -> None:
        # When lead 1003 gets lead 1200's vector and lead 1299 and 1000 are removed
        self.index.upsert(np.array([1003]), self.vectors[200:201])
        self.index.remove(np.array([1299, 1000, 424242]))
        # Then the index holds 298 leads, 1003 answers for 1200's vector beside 1200 itself
        self.assertEqual(len(self.index), 298)
        top = self.index.search(self.vectors[200], 2)
        self.assertEqual(sorted(h[0] for h in top), [1003, 1200])
        for lead in (1001, 1150, 1298):  # rows moved by the removals still hold their own vectors
            np.testing.assert_array_equal(self.index.vector(lead), self.vectors[lead - 1000])
        self.assertIsNone(self.index.vector(1299))
        self.assertEqual(sorted(self.index.ids().tolist()), sorted(set(range(1000, 1299)) - {1000}))

    def test_a_vector_of_the_wrong_size_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.index.upsert(np.array([1]), np.zeros((1, 8), dtype=np.float32))
        with self.assertRaises(ValueError):
            self.index.search(np.zeros(8, dtype=np.float32), 3)


class VectorSearchSuite:
    """Mixin: subclasses provide ``make_home()`` returning a TempHome with the sample leads."""

    home: TempHome

    @classmethod
    def make_home(cls) -> TempHome:
        raise NotImplementedError

    @classmethod
    def setUpClass(cls) -> None:
        cls.home = cls.make_home()
        cls.orch = LeadOrchestrator(settings=cls.home.settings)

    def search(self, **query):  # type: ignore[no-untyped-def]
        return self.orch.run({"lead_query": query})

    def test_a_semantic_query_ranks_within_its_filters_and_names_the_embedder(self) -> None:
        env = self.search(text="head of sales fintech", industry="Fintech", location="Berlin",
                          search="semantic", limit=20)
        records = env["records"]
        expected = [r for r in SAMPLE if r["industry"] == "Fintech"
                    and "berlin" in f"{r['location']} {r['company_location']}".lower()]
        self.assertEqual(len(records), min(20, len(expected)))
        self.assertTrue(all(r["industry"] == "Fintech" for r in records))
        self.assertTrue(all("Berlin" in (r["location"], r["company_location"]) for r in records))
        self.assertEqual(env["metadata"]["embedder"], {"name": "hashing-v1", "kind": "hashing"})
        self.assertEqual(records[0]["match"]["strategies"], ["semantic"])
        scores = [r["match"]["score"] for r in records]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertEqual(records[0]["title"], "Head of Sales")

    def test_free_text_runs_hybrid_and_each_record_says_which_strategies_found_it(self) -> None:
        env = self.search(text="Fintech sales director", limit=10)
        meta = env["metadata"]
        self.assertEqual(meta["fusion"], "reciprocal_rank")
        self.assertEqual(sorted(meta["branches"]), ["search_lexical", "search_semantic"])  # name: count
        both = [r for r in env["records"] if r["match"]["strategies"] == ["lexical", "semantic"]]
        self.assertTrue(both, "a lead both strategies found ranks on the first page")
        first = env["records"][0]["match"]
        self.assertEqual(set(first["by_strategy"]), set(first["strategies"]))
        fused = [r["match"]["fused_score"] for r in env["records"]]
        self.assertEqual(fused, sorted(fused, reverse=True))
        self.assertEqual(len(env["records"]), 10)
        # the fused record derives from a strategy's record, which names the lead's row
        self.assertEqual(env["records"][0]["provenance"]["node"], "rank")
        self.assertEqual(len(env["records"][0]["provenance"]["parents"]), 1)

    def test_hybrid_pages_do_not_overlap(self) -> None:
        first = self.search(text="Fintech sales director", limit=5)
        second = self.search(text="Fintech sales director", limit=5, offset=5)
        whole = self.search(text="Fintech sales director", limit=10)
        ids = [r["lead_id"] for r in first["records"] + second["records"]]
        self.assertEqual(ids, [r["lead_id"] for r in whole["records"]])
        self.assertEqual(first["metadata"]["next_offset"], 5)
        # and deep pages too: no lead twice, none skipped, the same total on every page
        seen: list[int] = []
        totals = set()
        for offset in range(0, 300, 50):
            page = self.search(text="Fintech sales director", limit=50, offset=offset)
            seen += [r["lead_id"] for r in page["records"]]
            totals.add(page["metadata"]["total_count"])
        deep = self.search(text="Fintech sales director", limit=300, ids_only=True)
        self.assertEqual(len(seen), len(set(seen)))
        self.assertEqual(seen, [r["lead_id"] for r in deep["records"]])
        self.assertEqual(len(totals), 1)

    def test_keywords_rank_any_word_within_the_filters(self) -> None:
        from agent.errors import PayloadError
        from agent.leads.query import LeadQuery
        from agent.leads.search import LeadSearch

        search = LeadSearch(self.home.database())
        model = next(r for r in SAMPLE if r["title"] == "Founder" and " " not in r["industry"] + r["location"])
        wanted = (model["industry"].lower(), model["location"].lower(), "founder")
        result = search.search(LeadQuery(text=" ".join(wanted), keywords=True, limit=20))
        words = [sum(w in f"{r['title']} {r['industry']} {r['location']} {r['company_location']}".lower()
                     for w in wanted) for r in result.rows]
        self.assertEqual(len(result.rows), 20)
        self.assertEqual(words[0], 3, result.rows[0])  # a lead with every word ranks first
        self.assertGreaterEqual(words[0], words[-1])
        scores = [r["match"]["score"] for r in result.rows]
        self.assertEqual(scores, sorted(scores, reverse=True))
        filtered = search.search(LeadQuery(text="robotics founder", keywords=True, location="Berlin", limit=50))
        self.assertTrue(filtered.rows)
        self.assertTrue(all("Berlin" in (r["location"], r["company_location"]) for r in filtered.rows))
        with self.assertRaises(PayloadError) as caught:
            search.search(LeadQuery(text="robotics", keywords=True, after_id=3))
        self.assertEqual(caught.exception.field, "lead_query.after_id")

    def test_the_in_process_filters_pass_exactly_the_leads_the_sql_filters_pass(self) -> None:
        from agent.leads.query import LeadQuery
        from agent.leads.search import LeadSearch

        db = self.home.database()
        search = LeadSearch(db)
        for filters in ({"title": "head"}, {"title": "CTO"}, {"industry": "Fintech", "location": "Berlin"},
                        {"company_size": "11-50", "title": "Sales"}, {"location": "new york"}):
            with self.subTest(**filters):
                by_sql: list[int] = []
                after = 0
                while after is not None:
                    page = search.search(LeadQuery(**filters, ids_only=True, limit=500, after_id=after)).rows
                    by_sql += [r["lead_id"] for r in page]
                    after = page[-1]["lead_id"] if len(page) == 500 else None
                with db.connect() as conn:
                    in_process = search.filtered_ids(conn, LeadQuery(**filters, text="x"))
                self.assertTrue(by_sql)
                self.assertEqual(sorted(in_process.tolist()), sorted(by_sql))

    def test_a_semantic_search_cannot_be_asked_to_honour_an_identity_filter(self) -> None:
        from agent.errors import PayloadError

        for mode in ("semantic", "hybrid"):
            for field, value in (("domain", "acme.example"), ("company", "Acme"), ("email", "a@acme.example")):
                with self.subTest(mode=mode, field=field), self.assertRaises(PayloadError) as caught:
                    self.search(text="sales leaders", search=mode, **{field: value})
                self.assertEqual(caught.exception.field, "lead_query.search")
                self.assertIn(field, caught.exception.reason)

    def test_a_company_query_stays_lexical(self) -> None:
        env = self.search(text="leads at Acme in Berlin", limit=10)
        self.assertEqual(list(env["metadata"]["branches"]), ["search_lexical"])
        self.assertNotIn("embedder", env["metadata"])

    def test_an_update_is_embedded_again_and_a_new_lead_is_indexed(self) -> None:
        db = self.home.database()
        vectors = lead_vectors(db, "default", HashingEmbedder())
        vectors.sync()
        self.assertTrue(vectors.sync().skipped, "nothing changed: nothing is read")
        # When one lead's title changes and a lead is added
        lead = dict(SAMPLE[5], title="Chief Revenue Officer")
        new = dict(SAMPLE[6], email="new.person@acme.example", first_name="New", title="Growth Lead")
        LeadStore(db, tenant="default").upsert_rows([lead, new])
        report = vectors.sync()
        # Then exactly those two are embedded, and a semantic search finds the new lead first
        self.assertEqual((report.embedded, report.removed), (2, 0))
        env = self.search(text="Growth Lead", search="semantic", limit=3)
        self.assertEqual(env["records"][0]["email"], "new.person@acme.example")
        # and the in-process keyword index has reloaded: the new words are found
        from agent.leads.query import LeadQuery
        from agent.leads.search import LeadSearch

        found = LeadSearch(db).search(LeadQuery(text="growth", keywords=True, limit=5)).rows
        self.assertEqual([r["email"] for r in found], ["new.person@acme.example"])
        # And another process's index (a fresh LeadVectors) reads the same rows
        other = LeadVectors(db, tenant="default", embedder=HashingEmbedder())
        self.assertEqual(len(other.index()), len(vectors.index()))
        self.assertEqual(sorted(other.index().ids().tolist()), sorted(vectors.index().ids().tolist()))


class PluggableIndexTest(unittest.TestCase):
    def test_another_index_class_is_filled_from_the_table_and_searched(self) -> None:
        # Given an index class of our own (here a FlatIndex that records its builds)
        built: list[int] = []

        class Recording(FlatIndex):
            name = "recording"

            def __init__(self, dims: int, *, capacity: int = 1024) -> None:
                super().__init__(dims, capacity=capacity)
                built.append(capacity)

        home = TempHome(sample_data="on", sample_size=50, embedder="hashing")
        self.addCleanup(home.cleanup)
        vectors = LeadVectors(home.database(), tenant="default", embedder=HashingEmbedder(), index_factory=Recording)
        vectors.sync()
        # When the index is asked for
        index = vectors.index()
        # Then it is one of ours, holding every lead, and it answers
        self.assertIsInstance(index, Recording)
        self.assertEqual(len(index), 50)
        self.assertTrue(built)
        self.assertEqual(len(index.search(HashingEmbedder().embed(["CTO"])[0], 3)), 3)


class StaleVectorTest(unittest.TestCase):
    def test_a_lead_changed_while_it_was_embedded_never_gets_the_stale_vector(self) -> None:
        # Given two indexers on one store (two processes), and an import that lands while one embeds
        home = TempHome(embedder="hashing")
        self.addCleanup(home.cleanup)
        db = home.database()
        leads = generate_leads(60)
        LeadStore(db, tenant="default").upsert_rows(leads)
        changed = dict(leads[0], title="Chief Underwater Basket Weaving Officer")
        other = LeadVectors(db, tenant="default", embedder=HashingEmbedder())

        class Slow(HashingEmbedder):
            fired = False

            def embed(self, texts):  # type: ignore[no-untyped-def]
                out = super().embed(texts)  # from the texts as this indexer read them
                if not Slow.fired:
                    Slow.fired = True
                    LeadStore(db, tenant="default").upsert_rows([changed])
                    other.sync()  # the other indexer embeds the new text first
                return out

        slow = LeadVectors(db, tenant="default", embedder=Slow())
        # When the slow indexer finishes after the other one
        report = slow.sync()
        # Then it left the changed lead alone, and the stored vector is the new text's
        self.assertEqual((report.stale, report.embedded), (1, 59))
        found = other.index().search(HashingEmbedder().embed(["Chief Underwater Basket Weaving Officer"])[0], 1)
        self.assertAlmostEqual(found[0][1], HashingEmbedder().embed([lead_text({
            **changed, "company_size": changed["size"]})])[0] @ HashingEmbedder().embed(
            ["Chief Underwater Basket Weaving Officer"])[0], places=4)
        self.assertFalse(slow.sync().skipped, "a sync that left a lead stale looks again next time")


class SQLiteVectorSearchTest(VectorSearchSuite, unittest.TestCase):
    @classmethod
    def make_home(cls) -> TempHome:
        return TempHome(sample_data="on", embedder="hashing")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()


@requires_real_services()
class PostgresVectorSearchTest(VectorSearchSuite, unittest.TestCase):
    @classmethod
    def make_home(cls) -> TempHome:
        cls.schema = PostgresSchema()
        return TempHome(database_url=cls.schema.url, sample_data="on", embedder="hashing")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()
        cls.schema.drop()


@unittest.skipUnless(semantic_available(), "the semantic extra is not installed")
class SemanticModelSearchTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.home = TempHome(sample_data="on", sample_size=600, embedder="semantic")
        cls.orch = LeadOrchestrator(settings=cls.home.settings)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()

    def test_the_issue_query_finds_berlin_fintech_sales_people(self) -> None:
        env = self.orch.run({"lead_query": "fintech startups in Berlin hiring sales people"})
        self.assertEqual(env["metadata"]["embedder"]["kind"], "semantic")
        self.assertEqual(env["metadata"]["embedder"]["name"], embedder_for(self.home.settings).name)
        top = env["records"][:10]
        self.assertEqual(len(top), 10)
        fintech = sum(r["industry"] == "Fintech" for r in top)
        berlin = sum("Berlin" in (r["location"], r["company_location"]) for r in top)
        self.assertGreaterEqual(fintech + berlin, 10, [(r["title"], r["industry"], r["location"]) for r in top])
