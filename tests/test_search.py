"""Lead search through the LeadOrchestrator on the generated sample data.

One suite, run on the embedded SQLite default and on PostgreSQL.
"""

from __future__ import annotations

import unittest
from collections import Counter

from agent.envelope import record_hash
from agent.errors import PayloadError
from agent.high_level_agents.orchestrators import LeadOrchestrator
from agent.leads.sample import generate_leads
from tests.support import PostgresSchema, TempHome, requires_real_services

SAMPLE = generate_leads(2000)
BY_DOMAIN = Counter(r["domain"] for r in SAMPLE)
BY_INDUSTRY = Counter(r["industry"] for r in SAMPLE)


class LeadSearchSuite:
    """Mixin: subclasses provide ``make_home()`` returning a TempHome with sample data."""

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

    def test_keyset_pages_read_every_match_once_in_id_order(self) -> None:
        # Given the matches of a filter, read in one go
        whole = self.search(title="Head", limit=500)["records"]
        self.assertGreater(len(whole), 20)
        # When they are read in keyset pages of 7, each after the last id of the one before
        seen, after, pages = [], 0, 0
        while after is not None:
            env = self.search(title="Head", limit=7, after_id=after)
            seen.extend(r["lead_id"] for r in env["records"])
            after = env["metadata"]["next_after_id"]
            pages += 1
            self.assertLess(pages, 500, "paging does not end")
        # Then every match came once, in id order
        self.assertEqual(seen, sorted(r["lead_id"] for r in whole))

    def test_ids_only_gives_the_same_leads_with_their_ids_alone(self) -> None:
        # When the same query is asked for ids only
        full = self.search(title="Head", limit=50)["records"]
        ids = self.search(title="Head", limit=50, ids_only=True)["records"]
        # Then the same leads come, in the same order, each with no field of the lead row
        self.assertEqual([r["lead_id"] for r in ids], [r["lead_id"] for r in full])
        self.assertEqual({k for r in ids for k in r} - {"lead_id", "match", "provenance"}, set())

    def test_keyset_paging_of_a_fuzzy_search_is_refused_naming_the_field(self) -> None:
        with self.assertRaises(PayloadError) as caught:
            self.search(company="Acme", after_id=0)
        self.assertEqual(caught.exception.field, "lead_query.after_id")

    def test_exact_company_name_ranks_that_company_first_with_full_score(self) -> None:
        # When
        env = self.search(company="Acme Corp", limit=50)
        # Then
        top = [r for r in env["records"] if r["match"]["score"] == 100.0]
        self.assertEqual({r["company"] for r in top}, {"Acme Corp"})
        self.assertEqual(len(top), BY_DOMAIN["acme.example"])
        self.assertEqual(env["records"][0]["company"], "Acme Corp")

    def test_fuzzy_company_name_with_a_typo_still_finds_the_company(self) -> None:
        env = self.search(company="Acmee Corp")
        self.assertEqual(env["records"][0]["company"], "Acme Corp")
        self.assertGreaterEqual(env["records"][0]["match"]["score"], 80)

    def test_a_name_written_as_one_word_finds_the_company_written_as_two(self) -> None:
        env = self.search(company="AcmeRobotics")
        self.assertEqual(env["records"][0]["company"], "Acme Robotics GmbH")

    def test_name_variants_match_after_normalisation(self) -> None:
        env = self.search(company="Acme Holdings GmbH", limit=100)
        self.assertEqual(env["records"][0]["company"], "ACME Holdings, Inc.")
        self.assertEqual(env["records"][0]["match"]["score"], 100.0)

    def test_unrelated_company_names_do_not_match_acme(self) -> None:
        env = self.search(company="Acme", limit=500)
        self.assertTrue(all("acme" in r["company"].lower() for r in env["records"]))
        acme_total = sum(n for d, n in BY_DOMAIN.items() if d.startswith("acme"))
        self.assertEqual(env["metadata"]["total_count"], acme_total)

    def test_a_generic_word_matches_every_company_that_has_it(self) -> None:
        # Given: every sample lead whose company name has the word "Group"
        expected = sum(1 for r in SAMPLE if "group" in r["company"].lower().split())
        self.assertGreater(expected, 25)
        # When
        env = self.search(company="Group", limit=5)
        # Then: total_count counts them all, not only a first batch of companies
        self.assertGreaterEqual(env["metadata"]["total_count"], expected)

    def test_name_beside_company_is_read_as_a_person_name(self) -> None:
        # Given: a person at Acme Corp
        person = next(r for r in SAMPLE if r["domain"] == "acme.example")
        # When
        env = self.search(company="Acme Corp", name=person["first_name"], limit=100)
        # Then: only people of that name at that company
        self.assertGreater(len(env["records"]), 0)
        for r in env["records"]:
            self.assertIn(person["first_name"].lower(), r["full_name"].lower())
            self.assertEqual(r["company"], "Acme Corp")

    def test_domain_lookup_accepts_urls_and_subdomains(self) -> None:
        env = self.search(domain="https://www.acme.example/about", limit=100)
        self.assertEqual(env["metadata"]["total_count"], BY_DOMAIN["acme.example"])
        self.assertTrue(all(r["domain"] == "acme.example" for r in env["records"]))

    def test_total_count_is_the_true_number_of_matches_not_the_page_size(self) -> None:
        env = self.search(industry="Fintech", limit=3)
        self.assertEqual(len(env["records"]), 3)
        self.assertEqual(env["metadata"]["total_count"], BY_INDUSTRY["Fintech"])

    def test_pages_cover_every_match_once(self) -> None:
        # Given
        total = self.search(industry="Energy", limit=1)["metadata"]["total_count"]
        # When
        seen: list[int] = []
        offset = 0
        while offset is not None:
            env = self.search(industry="Energy", limit=40, offset=offset)
            seen.extend(r["lead_id"] for r in env["records"])
            offset = env["metadata"]["next_offset"]
        # Then
        self.assertEqual(len(seen), total)
        self.assertEqual(len(set(seen)), total)

    def test_fuzzy_results_paginate_in_score_order(self) -> None:
        first = self.search(company="Acme", limit=10, offset=0)
        second = self.search(company="Acme", limit=10, offset=10)
        scores = [r["match"]["score"] for r in first["records"] + second["records"]]
        self.assertEqual(scores, sorted(scores, reverse=True))
        self.assertFalse({r["lead_id"] for r in first["records"]} & {r["lead_id"] for r in second["records"]})

    def test_free_text_maps_company_and_location_to_filters(self) -> None:
        env = self.search(text="leads at Acme in Berlin", limit=100)
        self.assertEqual(env["metadata"]["query"]["company"], "Acme")
        self.assertEqual(env["metadata"]["query"]["location"], "Berlin")
        self.assertGreater(env["metadata"]["total_count"], 0)
        for r in env["records"]:
            self.assertIn("acme", r["company"].lower())
            self.assertIn("Berlin", (r["location"], r["company_location"]))

    def test_full_text_matches_words_across_fields(self) -> None:
        env = self.search(text="robotics munich", limit=100)
        self.assertGreater(env["metadata"]["total_count"], 0)
        self.assertIn("full_text", env["metadata"]["strategies"])

    def test_title_filter_matches_words_not_substrings(self) -> None:
        env = self.search(title="CTO", limit=200)
        self.assertGreater(len(env["records"]), 0)
        self.assertTrue(all(r["title"] == "CTO" for r in env["records"]))

    def test_exact_email_lookup_returns_that_lead(self) -> None:
        email = SAMPLE[10]["email"]
        env = self.search(email=email.upper())
        self.assertEqual([r["email"] for r in env["records"]], [email])

    def test_every_record_carries_provenance_to_its_row(self) -> None:
        env = self.search(name="Acme", limit=5)
        for r in env["records"]:
            prov = r["provenance"]
            self.assertEqual(prov["table"], "contacts")
            self.assertEqual(prov["row_id"], r["lead_id"])
            self.assertEqual(prov["source_id"], f"contacts/{r['lead_id']}")
            self.assertEqual(prov["hash"], record_hash(r))
            self.assertEqual(prov["run_id"], env["metadata"]["run_id"])

    def test_bad_limit_is_refused_naming_the_field(self) -> None:
        with self.assertRaises(PayloadError) as caught:
            self.search(company="Acme", limit=0)
        self.assertEqual(caught.exception.field, "lead_query.limit")

    def test_unknown_query_field_is_refused_naming_it(self) -> None:
        with self.assertRaises(PayloadError) as caught:
            self.search(colour="blue")
        self.assertEqual(caught.exception.field, "lead_query.colour")

    def test_empty_query_is_refused(self) -> None:
        with self.assertRaises(PayloadError) as caught:
            self.search()
        self.assertEqual(caught.exception.field, "lead_query")

    def test_invalid_domain_is_refused_naming_the_field(self) -> None:
        with self.assertRaises(PayloadError) as caught:
            self.search(domain="not a domain")
        self.assertEqual(caught.exception.field, "lead_query.domain")

    def test_envelope_with_records_is_passed_through_without_a_new_query(self) -> None:
        # Given
        upstream = self.search(company="Acme", limit=3)
        # When
        env = self.orch.run(upstream)
        # Then
        self.assertTrue(env["metadata"]["passthrough"])
        self.assertEqual(env["metadata"]["upstream_run_id"], upstream["metadata"]["run_id"])
        self.assertEqual(env["metadata"]["run_id"], upstream["metadata"]["run_id"])  # the run carries on
        self.assertEqual([r["provenance"]["hash"] for r in env["records"]],
                         [r["provenance"]["hash"] for r in upstream["records"]])


class SQLiteLeadSearchTest(LeadSearchSuite, unittest.TestCase):
    @classmethod
    def make_home(cls) -> TempHome:
        return TempHome(sample_data="on")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()


@requires_real_services()
class PostgresLeadSearchTest(LeadSearchSuite, unittest.TestCase):
    @classmethod
    def make_home(cls) -> TempHome:
        cls.schema = PostgresSchema()
        return TempHome(database_url=cls.schema.url, sample_data="on")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.home.cleanup()
        cls.schema.drop()
