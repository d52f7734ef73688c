"""ICP scoring: each lead gets a score from 0 to 100 and the reasons that produced it.

A campaign's ICP is rules plus, optionally, a free-text description::

    icp:
      rules:
        - {field: industry, any_of: [Fintech, Insurance], weight: 40}
        - {field: title, any_of: [Head, VP, Director], weight: 40}
        - {field: location, any_of: [Berlin, Munich], weight: 20}
      description: "B2B fintech startups that are hiring their first sales team"
      description_weight: 30

A rule matches when one of its words starts a word of the lead's field
("head" matches "Head of Sales", not "Forehead"); its weight counts in full
or not at all.  The description counts by how close the lead's text is to it
(cosine similarity through the embedder, from 0.2 up to 0.7 scaled to
nothing up to the whole weight).  The score is the share of all weights
earned, rounded; every rule, matched or not, and the description's part
are named in ``reasons``, so a score can always be explained.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.embeddings import Embedder, lead_text
from agent.errors import InvalidInput
from agent.validation import first_error

__all__ = ["ICP", "ICPRule", "LeadScore", "parse_icp", "score_leads"]

_FIELDS = {"industry": ("industry",), "title": ("title",), "company_size": ("company_size",),
           "location": ("location", "company_location"), "company": ("company",)}
# Similarity below LOW earns nothing, above HIGH everything (all-MiniLM's related texts sit around 0.4-0.7).
LOW, HIGH = 0.2, 0.7


class ICPRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: Literal["industry", "title", "company_size", "location", "company"]
    any_of: list[str] = Field(min_length=1, max_length=50)
    weight: int = Field(ge=1, le=100)


class ICP(BaseModel):
    """An ideal customer profile: rules, and an optional description weighed by similarity."""

    model_config = ConfigDict(extra="forbid")
    rules: list[ICPRule] = Field(default_factory=list, max_length=20)
    description: str | None = Field(default=None, max_length=1000)
    description_weight: int = Field(default=0, ge=0, le=100)
    threshold: int = Field(default=50, ge=0, le=100, description="Leads scoring below it are not drafted.")

    def total_weight(self) -> int:
        return sum(r.weight for r in self.rules) + (self.description_weight if self.description else 0)


@dataclass(frozen=True)
class LeadScore:
    """A lead's score (0-100), the reasons for it, and the embedder that weighed the description."""

    lead_id: Any
    score: int
    reasons: tuple[str, ...]
    embedder: str | None = None

    def passes(self, icp: ICP) -> bool:
        return self.score >= icp.threshold


def parse_icp(data: Any, field: str = "icp") -> ICP:
    """An ``ICP`` from a dict; ``InvalidInput`` names the bad field (``icp.rules[0].weight``)."""
    try:
        icp = ICP.model_validate(data)
    except ValidationError as exc:
        path, reason = first_error(exc)
        raise InvalidInput(f"{field}.{path}" if path else field, reason) from None
    if icp.total_weight() == 0:
        raise InvalidInput(field, "needs at least one rule, or a description with a weight")
    return icp


def _matches(value: Any, word: str) -> bool:
    if not isinstance(value, str) or not value:
        return False
    return re.search(r"(?<!\w)" + re.escape(word.casefold()), value.casefold()) is not None


def score_leads(icp: ICP, leads: Sequence[Mapping[str, Any]], *, embedder: Embedder | None = None) -> list[LeadScore]:
    """Every lead's score, in order.  The description needs ``embedder`` (else it is left out, and the
    reasons say so)."""
    total = icp.total_weight()
    similarities: list[float] | None = None
    if icp.description and icp.description_weight:
        if embedder is not None and leads:
            vectors = embedder.embed([icp.description, *(lead_text(lead) for lead in leads)])
            similarities = [float(v @ vectors[0]) for v in vectors[1:]]
    scores = []
    for index, lead in enumerate(leads):
        earned = 0.0
        reasons = []
        for rule in icp.rules:
            hit = next((w for w in rule.any_of for name in _FIELDS[rule.field] if _matches(lead.get(name), w)),
                       None)
            if hit is not None:
                earned += rule.weight
                reasons.append(f"{rule.field} matches {hit!r} (+{rule.weight})")
            else:
                reasons.append(f"{rule.field} is none of {', '.join(rule.any_of)} (0 of {rule.weight})")
        if icp.description and icp.description_weight:
            if similarities is None:
                reasons.append(f"description not weighed: no embedder (0 of {icp.description_weight})")
            else:
                share = min(1.0, max(0.0, (similarities[index] - LOW) / (HIGH - LOW)))
                part = icp.description_weight * share
                earned += part
                reasons.append(f"description similarity {similarities[index]:.2f} "
                               f"(+{part:.0f} of {icp.description_weight})")
        score = round(100 * earned / total) if total else 0
        scores.append(LeadScore(lead.get("lead_id"), int(score), tuple(reasons),
                                None if embedder is None or similarities is None else embedder.name))
    return scores
