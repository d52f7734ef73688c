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

In parts (``part_size``, as ``agent campaign run`` plans): a job reads about
``part_size`` leads from where the last part stopped (its ``cursor``), plans
their whole batches, and queues first the next part, then those batches.  A
worker takes the next part while others run the first batches, so sending
starts at once and the search runs beside it; the ids short of a batch ride
along to the next part (``carry``), and the last part plans them all.  Each
part is a run of its own, recorded with its follow-ups, so a run killed
half-way through its planning resumes it where it stopped.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.campaigns.model import Campaign, check_tenant
from agent.campaigns.planning import MAX_PART, find_leads, find_part, plan_batches, planning_plan
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
    # Planning in parts (None: every lead at once); see the module's doc.
    part_size: int | None = Field(default=None, ge=1, le=MAX_PART)
    part: int = Field(default=0, ge=0)
    cursor: dict[Literal["after_id", "offset"], Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, max_length=1)
    next_batch: int = Field(default=0, ge=0)
    planned: int = Field(default=0, ge=0)
    carry: list[Annotated[int, Field(ge=1, strict=True)]] = Field(default_factory=list, max_length=MAX_PART)

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
        payload: CampaignPayload = state.input
        leads = self.registry.resolve(self.lead_orchestrator)
        if payload.part_size is None:
            ids = find_leads(leads, payload.campaign)
            return Output([{"lead_ids": ids, "cursor": None}], source=_SOURCE, found=len(ids))
        carry = payload.carry
        more, cursor = find_part(leads, payload.campaign, payload.cursor,
                                 have=payload.planned + len(carry), size=max(1, payload.part_size - len(carry)))
        carried = set(carry)
        ids = carry + [i for i in more if i not in carried]
        return Output([{"lead_ids": ids, "cursor": cursor}], source=_SOURCE, found=len(more))


def _plan(state: FlowState) -> Output:
    payload: CampaignPayload = state.input
    campaign = payload.campaign
    [found] = state.records("find")
    ids, cursor = found["lead_ids"], found["cursor"]
    records = []
    whole = len(ids)
    if cursor is not None:  # more to read: whole batches now, the rest with the next part
        whole -= len(ids) % campaign.limits.batch_size
        nxt = planning_plan(campaign, payload.run_key, topic=payload.topic, part_size=payload.part_size or 1,
                            part=payload.part + 1, cursor=cursor,
                            next_batch=payload.next_batch + whole // campaign.limits.batch_size,
                            planned=payload.planned + whole, carry=ids[whole:])
        # Queued before this part's batches: a free worker reads on while others send.
        records.append({"part": nxt.meta["part"], "run_id": nxt.job.run_id, "campaign_id": campaign.id,
                        FOLLOW_UP: _follow(payload, nxt)})
    plans = plan_batches(campaign, payload.run_key, ids[:whole], topic=payload.topic, first=payload.next_batch)
    records.extend({"batch": plan.meta["batch"], "run_id": plan.job.run_id, "leads": len(plan.meta["lead_ids"]),
                    "campaign_id": campaign.id, FOLLOW_UP: _follow(payload, plan)} for plan in plans)
    return Output(records, source=_SOURCE, campaign_id=campaign.id, campaign_run=payload.run_key,
                  batches=len(plans), leads=whole, more=cursor is not None)


def _follow(payload: CampaignPayload, plan: Any) -> dict[str, Any]:
    return {"topic": payload.topic, "job": plan.job.model_dump(mode="json"), "audit": plan.meta,
            "tenant": payload.campaign.tenant}
