"""ICP scoring: 0-100 with the reasons, rules and a description weighed by similarity."""

from __future__ import annotations

import unittest

from agent.campaigns import Campaign
from agent.embeddings import HashingEmbedder
from agent.errors import InvalidInput, PayloadError
from agent.scoring import parse_icp, score_leads

FINTECH_HEAD = {"lead_id": 1, "title": "Head of Sales", "company": "Kontofix GmbH", "industry": "Fintech",
                "location": "Hamburg", "company_location": "Hamburg"}
PLANT = {"lead_id": 2, "title": "Plant Manager", "company": "Ohio Castings", "industry": "Manufacturing",
         "location": "Cleveland"}
ICP_RULES = {"rules": [{"field": "industry", "any_of": ["Fintech", "Insurance"], "weight": 40},
                       {"field": "title", "any_of": ["Head", "VP"], "weight": 40},
                       {"field": "location", "any_of": ["Berlin", "Munich"], "weight": 20}]}


class ICPScoringTest(unittest.TestCase):
    def test_a_score_is_the_share_of_weights_earned_with_every_rule_named(self) -> None:
        [fit, unfit] = score_leads(parse_icp(ICP_RULES), [FINTECH_HEAD, PLANT])
        self.assertEqual((fit.lead_id, fit.score, unfit.score), (1, 80, 0))
        self.assertEqual(fit.reasons, ("industry matches 'Fintech' (+40)", "title matches 'Head' (+40)",
                                       "location is none of Berlin, Munich (0 of 20)"))
        self.assertTrue(fit.passes(parse_icp(ICP_RULES)))
        self.assertFalse(unfit.passes(parse_icp(ICP_RULES)))

    def test_a_rule_word_must_start_a_word_of_the_field(self) -> None:
        icp = parse_icp({"rules": [{"field": "title", "any_of": ["head"], "weight": 10}]})
        [forehead, head] = score_leads(icp, [{"title": "Forehead Specialist"}, {"title": "Sales Head, EMEA"}])
        self.assertEqual((forehead.score, head.score), (0, 100))

    def test_the_description_counts_by_similarity_and_names_its_embedder(self) -> None:
        icp = parse_icp({"description": "Head of Sales at a fintech company", "description_weight": 100})
        [near, far] = score_leads(icp, [FINTECH_HEAD, PLANT], embedder=HashingEmbedder())
        self.assertGreater(near.score, far.score)
        self.assertEqual(near.embedder, "hashing-v1")
        self.assertTrue(near.reasons[0].startswith("description similarity "))
        # Without an embedder the description is left out, and the reasons say so
        [alone] = score_leads(icp, [FINTECH_HEAD])
        self.assertEqual((alone.score, alone.embedder), (0, None))
        self.assertIn("no embedder", alone.reasons[0])

    def test_a_bad_icp_is_refused_naming_the_field(self) -> None:
        cases = {"icp.rules[0].weight": {"rules": [{"field": "title", "any_of": ["VP"], "weight": 0}]},
                 "icp.rules[0].field": {"rules": [{"field": "shoe_size", "any_of": ["9"], "weight": 5}]},
                 "icp": {"rules": [], "description": "anyone"}}
        for field, data in cases.items():
            with self.subTest(field=field), self.assertRaises(InvalidInput) as caught:
                parse_icp(data)
            self.assertEqual(caught.exception.field, field)

    def test_a_campaign_carries_its_icp_and_a_bad_one_is_named(self) -> None:
        base = {"id": "c1", "lead_query": {"industry": "Fintech"}, "template": {"subject": "Hi", "body": "Hello"}}
        self.assertEqual(Campaign.parse({**base, "icp": ICP_RULES}).icp.rules[1].any_of, ["Head", "VP"])
        with self.assertRaises(PayloadError) as caught:
            Campaign.parse({**base, "icp": {"rules": [], "description_weight": 10}})
        self.assertTrue(caught.exception.field.startswith("icp"), caught.exception.field)


if __name__ == "__main__":
    unittest.main()
