"""ICP scoring agent: leads and a campaign's ICP in, each lead with its score and reasons out.

Each record is the lead with ``icp_score`` (0-100), ``icp_reasons`` (every
rule, matched or not, and the description's part) and ``icp_pass`` (the score
reaches the ICP's threshold).  Its provenance has the lead record as parent,
so a draft traces back through its score to the lead row.  The metadata names
the embedder that weighed the description, the threshold, and how many leads
passed.  Without an ICP every lead passes, unscored, and the metadata says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.embeddings import embedder_for
from agent.envelope import PROVENANCE, make_envelope, make_provenance
from agent.errors import PayloadError
from agent.scoring.icp import parse_icp, score_leads

__all__ = ["ICPScorerAgent"]


class ICPScorerAgent(BaseAgent):
    """Scores leads against an ICP: rules plus a description weighed by embedding similarity."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    source = "icp_scorer"

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        leads = request.get("leads")
        if not isinstance(leads, list) or not all(isinstance(lead, Mapping) for lead in leads):
            raise PayloadError("leads", "must be a list of lead records")
        raw_icp = request.get("icp")
        meta: dict[str, Any] = {"requested": len(leads)}
        if raw_icp is None:
            records = [self._scored(lead, None, (), True, context) for lead in leads]
            return self._envelope(records, context, scored=False, passed=len(records), **meta)
        icp = parse_icp(raw_icp)
        embedder = embedder_for(context.settings) if icp.description and icp.description_weight else None
        scores = score_leads(icp, [_content(lead) for lead in leads], embedder=embedder)
        records = [self._scored(lead, s.score, s.reasons, s.passes(icp), context) for lead, s in zip(leads, scores)]
        return self._envelope(records, context, scored=True, threshold=icp.threshold,
                              passed=sum(r["icp_pass"] for r in records),
                              embedder=None if embedder is None else {"name": embedder.name, "kind": embedder.kind},
                              **meta)

    def _scored(self, lead: Mapping[str, Any], score: int | None, reasons: tuple[str, ...], passed: bool,
                context: RunContext) -> dict[str, Any]:
        record = {**_content(lead), "icp_score": score, "icp_reasons": list(reasons), "icp_pass": passed}
        parent = lead.get(PROVENANCE, {}).get("hash") if isinstance(lead.get(PROVENANCE), Mapping) else None
        record[PROVENANCE] = make_provenance(record, source=self.source, agent="icp_scorer", run_id=context.run_id,
                                             node=context.node, parents=[parent] if parent else [])
        return record

    def _envelope(self, records: list[dict[str, Any]], context: RunContext, **meta: Any) -> dict[str, Any]:
        return make_envelope(records, source=self.source, run_id=context.run_id, flow=context.flow,
                             node=context.node, agent="icp_scorer", duration_ms=context.elapsed_ms(), **meta)


def _content(lead: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in lead.items() if k != PROVENANCE}
