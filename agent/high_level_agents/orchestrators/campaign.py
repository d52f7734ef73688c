"""CampaignOrchestrator: a triggered campaign run, planned as a job of its own.

The flow::

    find ── plan

``find`` asks the ``lead_orchestrator`` for the campaign's leads (up to
``limits.per_run``, page by page); ``plan`` cuts them into batches and
returns one record per batch carrying a ``follow_up``: the outreach job that
runs it and what the audit store keeps to run it again.  The worker that ran
this job records every batch, then queues the follow-ups (``execute_job``),
so a trigger returns at once and the lead search runs on a worker, with its
retries.  The run key comes with the payload: planning the same trigger
twice queues nothing twice.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.campaigns.model import Campaign, check_tenant
from agent.campaigns.planning import find_leads, plan_batches
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.high_level_agents.orchestrators.base import BaseOrchestrator

__all__ = ["CampaignOrchestrator", "CampaignPayload", "FOLLOW_UP"]

FOLLOW_UP = "follow_up"
_SOURCE = "campaign_plan"


class CampaignPayload(BaseModel):
    """A campaign (a ``Campaign`` or its fields), the key of this run, and the topic of its batches."""

    model_config = ConfigDict(extra="forbid")
    campaign: Campaign
    run_key: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:\-]+$")
    topic: str = Field(default="campaigns", pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")

    @field_validator("campaign", mode="before")
    @classmethod
    def _campaign_fields(cls, value: Any) -> Any:
        if not isinstance(value, (Campaign, dict)):
            raise ValueError("must be a mapping of campaign fields")
        return value


class CampaignOrchestrator(BaseOrchestrator):
    """Finds a campaign's leads and plans its batches as follow-up jobs."""

    name: ClassVar[str] = "campaign_orchestrator"
    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    payload_model: ClassVar[type[BaseModel]] = CampaignPayload
    passthrough_envelopes: ClassVar[bool] = False
    lead_orchestrator: ClassVar[str] = "lead_orchestrator"

    def validate_payload(self, payload: Any) -> CampaignPayload:
        model: CampaignPayload = super().validate_payload(payload)
        check_tenant(model.campaign, self.tenant)
        return model

    def build_flow(self, variant: Any = None) -> FlowGraph:
        return (Flow(self.name, input_model=CampaignPayload)
                .node("find", self._find, lineage=None, description="the campaign's lead ids, best first")
                .node("plan", _plan, lineage=None, description="one record per batch, each with its job")
                .then("find", "plan")
                .build())

    def _find(self, state: FlowState) -> Output:
        ids = find_leads(self.registry.resolve(self.lead_orchestrator), state.input.campaign)
        return Output([{"lead_ids": ids}], source=_SOURCE, found=len(ids))


def _plan(state: FlowState) -> Output:
    payload: CampaignPayload = state.input
    [found] = state.records("find")
    plans = plan_batches(payload.campaign, payload.run_key, found["lead_ids"], topic=payload.topic)
    records = [{"batch": plan.meta["batch"], "run_id": plan.job.run_id, "leads": len(plan.meta["lead_ids"]),
                "campaign_id": payload.campaign.id,
                FOLLOW_UP: {"topic": payload.topic, "job": plan.job.model_dump(mode="json"), "audit": plan.meta,
                            "tenant": payload.campaign.tenant}}
               for plan in plans]
    return Output(records, source=_SOURCE, campaign_id=payload.campaign.id, campaign_run=payload.run_key,
                  batches=len(records), leads=len(found["lead_ids"]))
