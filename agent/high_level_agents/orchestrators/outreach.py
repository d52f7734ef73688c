"""OutreachOrchestrator: a campaign and a batch of lead ids in, one outcome per lead out.

The flow::

    load ── draft (one call per lead) ──┬── approval "required": hold
                                        └── approval "none":     deliver

``load`` reads the tenant's lead records (agent ``lead_loader``); ``draft``
renders the campaign template for each lead (agent ``copywriter``; a lead
whose draft fails is reported ``failed`` and the others go on, the envelope
marked ``partial``); ``hold`` keeps every draft ``awaiting_approval`` and
delivers nothing; ``deliver`` hands the drafts to the ``DeliveryOrchestrator``,
whose gates apply as always: nothing is written unless the campaign's
``allow_delivery`` is true, and then only to the outbox, once per
(campaign, lead, step).

Lineage: a delivered record's parent is its draft, whose parent is the lead
record, whose ``source_id`` names its row (``contacts/<id>``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.campaigns.model import Campaign, check_tenant
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.envelope import PROVENANCE, make_provenance
from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.high_level_agents.orchestrators.delivery import DeliveryOrchestrator

__all__ = ["OutreachOrchestrator", "OutreachPayload", "MAX_BATCH"]

MAX_BATCH = 1000
STEP = 1
_SOURCE = "outreach"


class OutreachPayload(BaseModel):
    """A campaign (a ``Campaign`` or its fields) and the ids of the leads of one batch."""

    model_config = ConfigDict(extra="forbid")
    campaign: Campaign
    lead_ids: list[Annotated[int, Field(ge=1, strict=True)]] = Field(min_length=1, max_length=MAX_BATCH)

    @field_validator("campaign", mode="before")
    @classmethod
    def _campaign_fields(cls, value: Any) -> Any:
        if not isinstance(value, (Campaign, dict)):
            raise ValueError("must be a mapping of campaign fields")
        return value

    @field_validator("lead_ids")
    @classmethod
    def _once_each(cls, value: list[int]) -> list[int]:
        return list(dict.fromkeys(value))


class OutreachOrchestrator(BaseOrchestrator):
    """Drafts a campaign's message for each lead of a batch, then holds or delivers the drafts."""

    name: ClassVar[str] = "outreach_orchestrator"
    capabilities: ClassVar[frozenset[str]] = frozenset({"read", "write", "send"})
    payload_model: ClassVar[type[BaseModel]] = OutreachPayload
    # A payload is a campaign and lead ids: an upstream envelope is not an answer here.
    passthrough_envelopes: ClassVar[bool] = False
    loader_agent: ClassVar[str] = "lead_loader"
    copywriter_agent: ClassVar[str] = "copywriter"
    # Drafts of a batch written at once.  The template copywriter only computes, so parallel lanes
    # would only take turns on the GIL (measured: 6% slower at 4); a copywriter that waits on I/O
    # (a model behind HTTP) wants more.
    draft_concurrency: ClassVar[int] = 1

    def validate_payload(self, payload: Any) -> OutreachPayload:
        model: OutreachPayload = super().validate_payload(payload)
        # Leads are loaded for this orchestrator's tenant: another tenant's campaign must not use them.
        check_tenant(model.campaign, self.tenant)
        return model

    def build_flow(self, variant: Any = None) -> FlowGraph:
        return (Flow(self.name, input_model=OutreachPayload)
                .node("load", agent=self.loader_agent, request=_load_request,
                      description="the batch's lead records, in the order given")
                .node("draft", agent=self.copywriter_agent, each=_loaded, key="lead_id", request=_draft_request,
                      allow_partial=True, concurrency=self.draft_concurrency,
                      description="one draft per lead; a failed lead leaves the others")
                .node("hold", _hold, lineage=None, description="approval required: the drafts wait, nothing is sent")
                .node("deliver", self._deliver, lineage=None,
                      description="the drafts through the DeliveryOrchestrator and its gates")
                .then("load", "draft")
                .route("draft", _approval, {"required": "hold", "none": "deliver"})
                .build())

    def _deliver(self, state: FlowState) -> Output:
        campaign: Campaign = state.input.campaign
        drafts = state.records("draft")
        delivered: list[dict[str, Any]] = []
        if drafts:
            delivery = DeliveryOrchestrator(self.registry, settings=self.settings, tenant=state.tenant,
                                            engine=self.engine)
            # Without checkpoints the delivery runs within this run (its steps audited under it); with
            # them a run_id names one flow's steps, so it gets its own (lineage holds through parents).
            run_id = state.run_id if self.engine.checkpoints is None else None
            envelope = delivery.run({"records": drafts, "campaign_id": campaign.id,
                                     "allow_delivery": campaign.allow_delivery}, run_id=run_id)
            delivered = envelope["records"]
        return _outcome(state, delivered, allow_delivery=campaign.allow_delivery)


def _load_request(state: FlowState) -> dict[str, Any]:
    return {"lead_ids": list(state.input.lead_ids)}


def _loaded(state: FlowState) -> list[dict[str, Any]]:
    return state.records("load")


def _draft_request(lead: dict[str, Any], state: FlowState) -> dict[str, Any]:
    campaign: Campaign = state.input.campaign
    return {"lead": lead, "template": campaign.template.model_dump(), "campaign_id": campaign.id, "step": STEP}


def _approval(state: FlowState) -> str:
    return state.input.campaign.approval


def _hold(state: FlowState) -> Output:
    held = []
    for draft in state.records("draft"):
        record = {"lead_id": draft["lead_id"], "to": draft["to"], "campaign_id": draft["campaign_id"],
                  "step": draft["step"], "template_id": draft["template_id"], "subject": draft["subject"],
                  "body": draft["body"], "status": "awaiting_approval", "reason": "approval_required",
                  "message_id": None}
        held.append(_derived(record, draft))
    return _outcome(state, held, allow_delivery=state.input.campaign.allow_delivery)


def _outcome(state: FlowState, done: list[dict[str, Any]], *, allow_delivery: bool) -> Output:
    """One record per loaded lead, in batch order: its outcome, or ``failed`` if its draft failed."""
    campaign: Campaign = state.input.campaign
    by_lead = {str(r["lead_id"]): r for r in done}
    errors = state["draft"]["metadata"]["errors"]
    why = {str(e.get("item")): e for e in errors}
    records = []
    for lead in state.records("load"):
        key = str(lead["lead_id"])
        record = by_lead.pop(key, None)
        if record is None:
            error = why.get(key, {})
            record = _derived({"lead_id": key, "to": lead.get("email"), "campaign_id": campaign.id, "step": STEP,
                               "status": "failed", "reason": error.get("code", "draft_failed"),
                               "error": error.get("message"), "message_id": None}, lead)
        records.append(record)
    records.extend(by_lead.values())  # never expected: an outcome for a lead that was not loaded
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    loaded = state["load"]["metadata"]
    return Output(records, source=_SOURCE, counts=counts, partial=bool(errors), errors=errors,
                  campaign_id=campaign.id, approval=campaign.approval, allow_delivery=allow_delivery,
                  requested=len(state.input.lead_ids), missing=loaded.get("missing", 0),
                  missing_ids=loaded.get("missing_ids", []))


def _derived(record: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    record[PROVENANCE] = make_provenance(record, source=_SOURCE, parents=[parent[PROVENANCE]["hash"]])
    return record
