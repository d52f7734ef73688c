"""A/B variants: drawn deterministically from (campaign, lead, step) and weights, kept once assigned."""

from __future__ import annotations

import threading
import unittest
from typing import Any

from agent.agents.copywriter import CopywriterAgent
from agent.builtins import register_builtins
from agent.campaigns.model import TemplateVariant
from agent.context import RunContext
from agent.copy.variants import VariantStore, pick_variant, variant_counts
from agent.envelope import make_provenance, validate_envelope
from agent.errors import PayloadError
from agent.high_level_agents.orchestrators import OutreachOrchestrator
from agent.storage.db import Database
from agent.leads.sample import load_sample_data
from agent.registry import Registry
from tests.support import TempHome, postgres_home, requires_real_services


def arms(**weights: float) -> list[TemplateVariant]:
    return [TemplateVariant(id=name, weight=weight) for name, weight in weights.items()]


def template(a: float = 1.0, b: float = 1.0, **changes: Any) -> dict[str, Any]:
    return {"id": "intro", "subject": "{{ lead.company }} and outbound", "body": "Hi {{ lead.first_name }}.",
            "variants": [{"id": "a", "weight": a},
                         {"id": "b", "subject": "A question for {{ lead.first_name }}", "weight": b}], **changes}


def lead(lead_id: int) -> dict[str, Any]:
    record = {"lead_id": lead_id, "email": f"lead{lead_id}@acme.example", "first_name": f"Lee{lead_id}",
              "company": "Acme Corp"}
    record["provenance"] = make_provenance(record, source="leads_db", source_id=f"contacts/{lead_id}")
    return record


class PickVariantTest(unittest.TestCase):
    def test_the_same_lead_and_step_always_draw_the_same_variant(self) -> None:
        draws = {pick_variant(arms(a=1, b=1, c=1), campaign_id="acme-q4", lead_id="42", step=1) for _ in range(5)}
        self.assertEqual(len(draws), 1)

    def test_weights_set_the_shares_and_weight_zero_is_never_drawn(self) -> None:
        # Given weights 1:3 and a retired variant
        variants = arms(a=1, b=3, old=0)
        # When 4000 leads draw
        draws = [pick_variant(variants, campaign_id="acme-q4", lead_id=str(i), step=1) for i in range(4000)]
        # Then about three in four get b, and none gets the retired one
        self.assertNotIn("old", draws)
        self.assertGreater(draws.count("b") / len(draws), 0.72)
        self.assertLess(draws.count("b") / len(draws), 0.78)

    def test_each_step_and_campaign_draws_on_its_own(self) -> None:
        variants = arms(a=1, b=1)
        step1 = [pick_variant(variants, campaign_id="acme-q4", lead_id=str(i), step=1) for i in range(200)]
        step2 = [pick_variant(variants, campaign_id="acme-q4", lead_id=str(i), step=2) for i in range(200)]
        other = [pick_variant(variants, campaign_id="beta", lead_id=str(i), step=1) for i in range(200)]
        self.assertNotEqual(step1, step2)
        self.assertNotEqual(step1, other)

    def test_variants_without_weight_are_refused_by_the_campaign_model(self) -> None:
        from agent.campaigns.model import Campaign

        with self.assertRaises(PayloadError) as caught:
            Campaign.parse({"id": "c", "lead_query": "x", "template": template(a=0, b=0)})
        self.assertEqual(caught.exception.field, "template.variants")
        with self.assertRaises(PayloadError) as caught:
            Campaign.parse({"id": "c", "lead_query": "x", "template": {
                **template(), "variants": [{"id": "a"}, {"id": "a", "subject": "x"}]}})
        self.assertIn("used twice", caught.exception.reason)


class VariantStoreSuite:
    """The ``variant_assignments`` table, on every database."""

    home: TempHome

    def store(self) -> VariantStore:
        return VariantStore(self.home.database())

    def test_the_first_assignment_stands(self) -> None:
        store = self.store()
        key = {"tenant": "default", "campaign_id": "acme-q4", "lead_id": "7", "step": 1}
        # Given a lead assigned variant a
        self.assertEqual(store.assign(**key, variant_id="a", template_id="intro"), ("a", True))
        # When another writer assigns b to the same lead and step
        # Then a is kept, and the writer is told so
        self.assertEqual(store.assign(**key, variant_id="b"), ("a", False))
        self.assertEqual(store.get(**key), "a")

    def test_two_writers_at_once_agree_on_one_variant(self) -> None:
        # Given two workers, each with its own handle, drawing different variants for one lead at once
        stores = [VariantStore(self.home.database()), VariantStore(Database(self.home.settings.resolved_database_url))]
        self.addCleanup(stores[1].db.engine.dispose)
        start = threading.Barrier(2)
        results: dict[str, tuple[str, bool]] = {}

        def assign(store: VariantStore, variant: str) -> None:
            start.wait()
            results[variant] = store.assign(tenant="default", campaign_id="acme-q4", lead_id="7", step=1,
                                            variant_id=variant)

        threads = [threading.Thread(target=assign, args=(store, v)) for store, v in zip(stores, "ab", strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Then exactly one wrote, and both got the variant it wrote
        self.assertEqual(sorted(wrote for _, wrote in results.values()), [False, True])
        self.assertEqual(len({kept for kept, _ in results.values()}), 1)

    def test_tenants_steps_and_campaigns_are_kept_apart(self) -> None:
        store = self.store()
        store.assign(tenant="default", campaign_id="acme-q4", lead_id="7", step=1, variant_id="a")
        for changed in ({"tenant": "other"}, {"step": 2}, {"campaign_id": "beta"}):
            key = {"tenant": "default", "campaign_id": "acme-q4", "lead_id": "7", "step": 1, **changed}
            with self.subTest(changed=changed):
                self.assertEqual(store.assign(**key, variant_id="b"), ("b", True))

    def test_counts_per_variant_of_each_step(self) -> None:
        store = self.store()
        for lead_id, step, variant in (("1", 1, "a"), ("2", 1, "b"), ("3", 1, "a"), ("1", 2, "b")):
            store.assign(tenant="default", campaign_id="acme-q4", lead_id=lead_id, step=step, variant_id=variant)
        store.assign(tenant="other", campaign_id="acme-q4", lead_id="9", step=1, variant_id="a")
        self.assertEqual(variant_counts(self.home.database(), "acme-q4"),
                         [{"step": 1, "variant_id": "a", "leads": 2}, {"step": 1, "variant_id": "b", "leads": 1},
                          {"step": 2, "variant_id": "b", "leads": 1}])
        self.assertEqual(store.counts("acme-q4", tenant="other"), [{"step": 1, "variant_id": "a", "leads": 1}])


class CopywriterVariantSuite:
    """The copywriter draws a lead's variant once, keeps it, and names it in the draft."""

    home: TempHome

    def draft(self, template: dict[str, Any], lead_id: int, *, step: int = 1) -> dict[str, Any]:
        context = RunContext(flow="test", node="draft", settings=self.home.settings)
        return CopywriterAgent().run({"lead": lead(lead_id), "template": template, "campaign_id": "acme-q4",
                                      "step": step}, context=context)

    def test_a_draft_carries_its_variant_and_the_assignment_is_stored(self) -> None:
        # Given variant b only (a is retired with weight 0)
        envelope = self.draft(template(a=0, b=1), 7)
        # Then the draft is b's, named in the record, its provenance and the metadata, and it is stored
        validate_envelope(envelope)
        [draft] = envelope["records"]
        self.assertEqual((draft["variant_id"], draft["subject"]), ("b", "A question for Lee7"))
        self.assertEqual(draft["provenance"]["variant_id"], "b")
        self.assertEqual(envelope["metadata"]["variant_id"], "b")
        stored = VariantStore(self.home.database()).get(tenant="default", campaign_id="acme-q4", lead_id="7", step=1)
        self.assertEqual(stored, "b")

    def test_a_lead_keeps_its_variant_when_the_weights_change(self) -> None:
        # Given leads 1-4 drafted while only a was drawn
        before = [self.draft(template(a=1, b=0), i)["records"][0]["variant_id"] for i in (1, 2, 3, 4)]
        # When the weights flip to b only
        after = [self.draft(template(a=0, b=1), i)["records"][0]["variant_id"] for i in (1, 2, 3, 4)]
        newcomer = self.draft(template(a=0, b=1), 5)["records"][0]
        # Then the earlier leads keep a, and a new lead gets b
        self.assertEqual((before, after, newcomer["variant_id"]), (["a"] * 4, ["a"] * 4, "b"))
        self.assertEqual(newcomer["subject"], "A question for Lee5")
        self.assertEqual(variant_counts(self.home.database(), "acme-q4"),
                         [{"step": 1, "variant_id": "a", "leads": 4}, {"step": 1, "variant_id": "b", "leads": 1}])

    def test_removing_a_variant_a_lead_has_is_refused_naming_the_variants(self) -> None:
        self.draft(template(a=0, b=1), 7)
        only_a = {**template(), "variants": [{"id": "a", "weight": 1}]}
        with self.assertRaises(PayloadError) as caught:
            self.draft(only_a, 7)
        self.assertEqual(caught.exception.field, "template.variants")
        self.assertIn("weight 0", caught.exception.reason)

    def test_an_error_in_a_variants_text_names_that_variant(self) -> None:
        broken = {**template(a=0, b=1), "variants": [{"id": "a", "weight": 0},
                                                      {"id": "b", "subject": "{{ lead.nickname }}", "weight": 1}]}
        with self.assertRaises(PayloadError) as caught:
            self.draft(broken, 7)
        self.assertEqual(caught.exception.field, "template.variants[1].subject")

    def test_each_step_has_its_own_assignment(self) -> None:
        steps = {"subject": "s1", "body": "b1", "steps": [
            {"step": 2, "subject": "Re: {{ lead.company }}", "body": "Again.",
             "variants": [{"id": "short", "weight": 1}, {"id": "long", "body": "Again, longer.", "weight": 0}]}]}
        first = self.draft(steps, 7)["records"][0]
        second = self.draft(steps, 7, step=2)["records"][0]
        self.assertEqual((first["variant_id"], second["variant_id"], second["template_id"]), (None, "short", "step2"))
        self.assertEqual(variant_counts(self.home.database(), "acme-q4"),
                         [{"step": 2, "variant_id": "short", "leads": 1}])


class SQLiteVariantTest(VariantStoreSuite, CopywriterVariantSuite, unittest.TestCase):
    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)


@requires_real_services()
class PostgresVariantTest(VariantStoreSuite, CopywriterVariantSuite, unittest.TestCase):
    def setUp(self) -> None:
        self.home = postgres_home(self)
        self.addCleanup(self.home.cleanup)


class OutreachVariantTest(unittest.TestCase):
    def test_a_batch_draws_a_variant_per_lead_and_the_counts_add_up(self) -> None:
        # Given sample leads and a campaign with two variants
        home = TempHome()
        self.addCleanup(home.cleanup)
        load_sample_data(home.database(), size=20, tenant="default")
        orchestrator = OutreachOrchestrator(register_builtins(Registry()), settings=home.settings)
        campaign = {"id": "acme-q4", "lead_query": {"company": "Acme"}, "template": template()}
        payload = orchestrator.validate_payload({"campaign": campaign, "lead_ids": list(range(1, 11))})
        # When the batch runs
        result = orchestrator.engine.run(orchestrator.flow_for(payload), payload)
        # Then every draft names its variant, and the stored counts match the drafts
        drafts = result.state["draft"]["records"]
        drawn = [d["variant_id"] for d in drafts]
        self.assertEqual(len(drafts), 10)
        self.assertTrue(set(drawn) <= {"a", "b"})
        self.assertEqual(variant_counts(home.database(), "acme-q4"),
                         [{"step": 1, "variant_id": v, "leads": drawn.count(v)} for v in sorted(set(drawn))])
        # And the same batch again keeps every lead's variant
        again = orchestrator.engine.run(orchestrator.flow_for(payload), payload)
        self.assertEqual([d["variant_id"] for d in again.state["draft"]["records"]], drawn)


if __name__ == "__main__":
    unittest.main()
