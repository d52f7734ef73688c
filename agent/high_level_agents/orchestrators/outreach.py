"""OutreachOrchestrator: a campaign and a batch of lead ids in, one outcome per lead out.

The flow::

    load ── enrich ── score ── draft (one call per lead that passes) ──┬── approval "required": hold
                                                                        └── approval "none":     deliver

    with ``release: true`` (a held batch whose drafts are all decided):
    approved ── deliver

``load`` reads the tenant's lead records (agent ``lead_loader``); ``enrich``
adds company facts, each with its own provenance (agent ``enricher``);
``score`` gives each lead its ICP score and reasons (agent ``icp_scorer``;
leads below the campaign ICP's threshold are reported ``skipped`` and get no
draft); ``draft`` writes each remaining lead's message (agent ``copywriter``;
a lead whose draft fails or fails its checks is reported ``failed`` and the
others go on, the envelope marked ``partial``).  ``hold`` parks every draft
in the approval queue (``agent drafts``) as ``awaiting_approval`` and
delivers nothing; once an operator has decided every draft of the batch, the
batch is released: ``approved`` reads its approved drafts, as edited, and
only those reach delivery.  ``deliver`` hands drafts to the
``DeliveryOrchestrator``, whose gates apply as always: nothing is written
unless the campaign's ``allow_delivery`` is true, and then only to the
outbox, once per (campaign, lead, step).

Lineage: a delivered record's parent is its draft (or the operator's edit of
it, whose parent is the draft), whose parent is the scored lead, then the
enriched lead, then the lead record, whose ``source_id`` names its row
(``contacts/<id>``).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agent.campaigns.model import Campaign, check_tenant
from agent.copy.personalise import llm_totals
from agent.engine.flow import Flow, FlowGraph
from agent.engine.outputs import Output
from agent.engine.state import FlowState
from agent.envelope import PROVENANCE, make_provenance
from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.high_level_agents.orchestrators.delivery import DeliveryOrchestrator

__all__ = ["OutreachOrchestrator", "OutreachPayload", "MAX_BATCH"]

MAX_BATCH = 1000
_SOURCE = "outreach"


class OutreachPayload(BaseModel):
    """A campaign (a ``Campaign`` or its fields) and the ids of the leads of one batch."""

    model_config = ConfigDict(extra="forbid")
    campaign: Campaign
    lead_ids: list[Annotated[int, Field(ge=1, strict=True)]] = Field(min_length=1, max_length=MAX_BATCH)
    # Deliver the batch's approved drafts from the approval queue (nothing is drafted again).
    release: bool = False
    # The sequence step to send: 1 starts the sequence; a later one is a follow-up, in the thread.
    step: int = Field(default=1, ge=1, le=100)

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
    enricher_agent: ClassVar[str] = "enricher"
    scorer_agent: ClassVar[str] = "icp_scorer"
    copywriter_agent: ClassVar[str] = "copywriter"
    # Drafts of a batch written at once.  The template copywriter only computes, so parallel lanes
    # would only take turns on the GIL (measured: 6% slower at 4); a copywriter that waits on I/O
    # (a model behind HTTP) wants more.
    draft_concurrency: ClassVar[int] = 1

    def validate_payload(self, payload: Any) -> OutreachPayload:
        model: OutreachPayload = super().validate_payload(payload)
        # Leads are loaded for this orchestrator's tenant: another tenant's campaign must not use them.
        check_tenant(model.campaign, self.tenant)
        model.campaign.template.for_step(model.step)  # a step the campaign does not have names ``step``
        return model

    def flow_variant(self, payload: Any) -> Any:
        """``release``; else which optional nodes the campaign needs: ``(enrich, score)``."""
        if not isinstance(payload, OutreachPayload):
            return None
        if payload.release:
            return "release"
        if payload.step > 1:  # a follow-up: the lead qualified at step 1; its sequence decides now
            return (payload.campaign.needs_enrichment(), False, True)
        return (payload.campaign.needs_enrichment(), payload.campaign.icp is not None, False)

    def build_flow(self, variant: Any = None) -> FlowGraph:
        if variant == "release":
            return (Flow(f"{self.name}.release", input_model=OutreachPayload)
                    .node("approved", self._approved, lineage=None,
                          description="the batch's decided drafts from the approval queue, as edited")
                    .node("deliver", self._deliver, lineage=None,
                          description="the approved drafts through the DeliveryOrchestrator and its gates")
                    .then("approved", "deliver")
                    .build())
        # Without a variant (``agent flow show``) the whole flow; a campaign that reads no facts and
        # has no ICP runs without the enrich and score nodes.
        enrich, score, follow_up = variant if isinstance(variant, tuple) else (True, True, False)
        flow = (Flow(self.name, input_model=OutreachPayload)
                .node("load", agent=self.loader_agent, request=_load_request,
                      description="the batch's lead records, in the order given"))
        chain = ["load"]
        if enrich:
            flow.node("enrich", agent=self.enricher_agent, request=_enrich_request,
                      description="company facts for each lead, each with its provenance")
            chain.append("enrich")
        if score:
            flow.node("score", agent=self.scorer_agent, request=_score_request,
                      description="each lead's ICP score and reasons; below the threshold, no draft")
            chain.append("score")
        if follow_up:
            flow.node("sequence", self._sequence, lineage=None,
                      description="each lead's sequence: due at this step or not, and the thread it answers")
            chain.append("sequence")
        return (flow.node("draft", agent=self.copywriter_agent, each=_passed, key="lead_id", request=_draft_request,
                          allow_partial=True, concurrency=self.draft_concurrency,
                          description="one draft per lead; a failed lead leaves the others")
                .node("hold", self._hold, lineage=None,
                      description="approval required: the drafts wait in the approval queue, nothing is sent")
                .node("deliver", self._deliver, lineage=None,
                      description="the drafts through the DeliveryOrchestrator and its gates")
                .then(*chain, "draft")
                .route("draft", _approval, {"required": "hold", "none": "deliver"})
                .build())

    def _db(self) -> Any:
        from agent.storage.db import Database

        return Database.for_settings(self.settings)

    def _drafts(self, tenant: str) -> Any:
        from agent.drafts import DraftStore

        return DraftStore(self._db(), tenant=tenant)

    def _hold(self, state: FlowState) -> Output:
        drafts = state.records("draft")
        scores = {str(r["lead_id"]): r.get("icp_score") for r in _leads(state)}
        # Each waiting draft is an outbox row too, "drafted" with its Message-ID fixed: only an
        # operator's approval makes it sendable (agent.delivery.ledger).  Staged before the draft is
        # queued, so an approval that comes at once finds the row it moves.
        self._stage(state, drafts)
        store = self._drafts(state.tenant)
        parked = {d.lead_id: d for d in store.park(drafts, run_id=state.run_id, scores=scores)}
        store.settle_outbox(parked.values())  # a batch run again: decided drafts' rows follow the decision
        # A draft approved already (the batch ran again: pacing deferred it, a worker died) goes now.
        approved = [parked[str(d["lead_id"])].record for d in drafts
                    if parked[str(d["lead_id"])].status == "approved"]
        sent = {str(r["lead_id"]): r for r in self._send(state, approved)}
        held = []
        for draft in drafts:
            # A batch run again finds its leads' drafts queued already: the queued draft stands.
            queued = parked[str(draft["lead_id"])]
            if queued.lead_id in sent:
                held.append(sent[queued.lead_id])
                continue
            kept = queued.record
            record = {"lead_id": kept["lead_id"], "to": kept["to"], "campaign_id": kept["campaign_id"],
                      "step": kept["step"], "template_id": kept.get("template_id"), "subject": queued.subject,
                      "body": queued.body, "status": queued.status, "draft_id": queued.id,
                      "reason": "approval_required" if queued.status == "awaiting_approval" else "decided",
                      "message_id": None}
            held.append(_derived(record, kept))
        return self._record(state, _outcome(state, held, allow_delivery=state.input.campaign.allow_delivery))

    def _sequence(self, state: FlowState) -> Output:
        """Which leads go on at this step: an active enrolment whose next step is this one.  Each
        record carries the thread the follow-up answers."""
        from agent.sequences import ACTIVE, EnrolmentStore

        step = state.input.step
        found = EnrolmentStore(self._db(), tenant=state.tenant, clock=self.clock).for_leads(
            state.input.campaign.id, state.input.lead_ids)
        records = []
        for lead in state.records("load"):
            enrolment = found.get(str(lead["lead_id"]))
            if enrolment is None:
                why = "not_enrolled"
            elif enrolment.status != ACTIVE:
                why = f"sequence_{enrolment.status}" + (f":{enrolment.stop_reason}" if enrolment.stop_reason else "")
            elif enrolment.next_step != step:
                why = f"sequence_at_step_{enrolment.next_step}"
            else:
                why = None
            records.append(_derived({"lead_id": str(lead["lead_id"]), "go": why is None, "reason": why,
                                     "thread": {"subject": (enrolment.first_subject or "") if enrolment else "",
                                                "message_ids": enrolment.thread[-100:] if enrolment else []}},
                                    lead))
        return Output(records, source=_SOURCE, step=step)

    def _stage(self, state: FlowState, drafts: list[dict[str, Any]]) -> None:
        from agent.delivery.keys import idempotency_key
        from agent.delivery.ledger import OutboxLedger
        from agent.delivery.message import new_message_id

        campaign: Campaign = state.input.campaign
        rows = [{"idempotency_key": idempotency_key(state.tenant, str(d["campaign_id"]), str(d["lead_id"]),
                                                    int(d["step"])),
                 "tenant_id": state.tenant, "campaign_id": str(d["campaign_id"]), "lead_id": str(d["lead_id"]),
                 "step": int(d["step"]), "channel": campaign.channel,
                 "message_id": new_message_id(self.settings.sender), "to_address": d["to"],
                 "subject": d["subject"], "record_hash": d[PROVENANCE]["hash"], "run_id": state.run_id,
                 "provenance": d.get(PROVENANCE)} for d in drafts]
        OutboxLedger(self._db()).stage_many(rows, state="drafted")

    def _send(self, state: FlowState, drafts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``drafts`` through the DeliveryOrchestrator and its gates; each one's outcome."""
        if not drafts:
            return []
        campaign: Campaign = state.input.campaign
        delivery = DeliveryOrchestrator(self.registry, settings=self.settings, tenant=state.tenant,
                                        engine=self.engine)
        # Without checkpoints the delivery runs within this run (its steps audited under it); with
        # them a run_id names one flow's steps, so it gets its own (lineage holds through parents).
        run_id = state.run_id if self.engine.checkpoints is None else None
        return delivery.run({"records": drafts, "campaign_id": campaign.id, "channel": campaign.channel,
                             "allow_delivery": campaign.allow_delivery, "timezone": campaign.timezone,
                             "pacing": campaign.pacing.model_dump(mode="json") if campaign.pacing else None},
                            run_id=run_id)["records"]

    def _record(self, state: FlowState, out: Output) -> Output:
        """Each lead's outcome moves its sequence: sent on, deferred later, bounced or refused stopped
        (``EnrolmentStore.record_outcomes``).  Nothing moves while delivery is off."""
        campaign: Campaign = state.input.campaign
        if campaign.allow_delivery:
            from agent.sequences import EnrolmentStore

            EnrolmentStore(self._db(), tenant=state.tenant, clock=self.clock).record_outcomes(
                campaign.template.waits(), out.records)
        return out

    def _approved(self, state: FlowState) -> Output:
        campaign: Campaign = state.input.campaign
        drafts = self._drafts(state.tenant).for_leads(campaign.id, state.input.lead_ids, step=state.input.step)
        # The records as queued or edited (their provenance intact); each one's decision beside them.
        decisions = {d.lead_id: {"status": d.status, "draft_id": d.id} for d in drafts}
        return Output([d.record for d in drafts], source=_SOURCE, decisions=decisions)

    def _deliver(self, state: FlowState) -> Output:
        campaign: Campaign = state.input.campaign
        release = state.input.release
        if release:
            decisions = state["approved"]["metadata"]["decisions"]
            drafts = [r for r in state.records("approved") if decisions[str(r["lead_id"])]["status"] == "approved"]
        else:
            # A lead whose draft an operator rejected (under an earlier approval policy) is never sent.
            rejected = {d.lead_id for d in self._drafts(state.tenant).for_leads(
                campaign.id, [r["lead_id"] for r in state.records("draft")], step=state.input.step)
                if d.status == "rejected"}
            drafts = [r for r in state.records("draft") if str(r["lead_id"]) not in rejected]
            refused = [_derived({"lead_id": str(r["lead_id"]), "to": r["to"], "campaign_id": campaign.id,
                                 "step": state.input.step, "status": "rejected", "reason": "rejected_by_operator",
                                 "message_id": None}, r)
                       for r in state.records("draft") if str(r["lead_id"]) in rejected]
        delivered = self._send(state, drafts)
        if release:
            return self._record(state, _released(state, delivered))
        return self._record(state, _outcome(state, delivered + refused, allow_delivery=campaign.allow_delivery))


def _load_request(state: FlowState) -> dict[str, Any]:
    return {"lead_ids": list(state.input.lead_ids)}


def _enrich_request(state: FlowState) -> dict[str, Any]:
    return {"leads": state.records("load")}


def _leads(state: FlowState) -> list[dict[str, Any]]:
    """The lead records as far as the flow has taken them: scored, else enriched, else loaded."""
    for node in ("score", "enrich", "load"):
        if node in state.results:
            return state.records(node)
    return []


def _score_request(state: FlowState) -> dict[str, Any]:
    icp = state.input.campaign.icp
    return {"leads": state.records("enrich") if "enrich" in state.results else state.records("load"),
            "icp": None if icp is None else icp.model_dump()}


def _passed(state: FlowState) -> list[dict[str, Any]]:
    if "sequence" in state.results:  # a follow-up: only leads whose sequence is due at this step
        going = {r["lead_id"] for r in state.records("sequence") if r["go"]}
        return [lead for lead in _leads(state) if str(lead["lead_id"]) in going]
    return [lead for lead in _leads(state) if lead.get("icp_pass", True)]


def _draft_request(lead: dict[str, Any], state: FlowState) -> dict[str, Any]:
    campaign: Campaign = state.input.campaign
    request = {"lead": lead, "template": campaign.template.model_dump(), "campaign_id": campaign.id,
               "step": state.input.step}
    if "sequence" in state.results:
        request["thread"] = next(r["thread"] for r in state.records("sequence")
                                 if r["lead_id"] == str(lead["lead_id"]))
    return request


def _approval(state: FlowState) -> str:
    return state.input.campaign.approval


def _outcome(state: FlowState, done: list[dict[str, Any]], *, allow_delivery: bool) -> Output:
    """One record per loaded lead, in batch order: its outcome, ``skipped`` if it scored below the
    ICP's threshold, or ``failed`` if its draft failed."""
    campaign: Campaign = state.input.campaign
    by_lead = {str(r["lead_id"]): r for r in done}
    errors = state["draft"]["metadata"]["errors"]
    why = {str(e.get("item")): e for e in errors}
    scored = {str(r["lead_id"]): r for r in state.records("score")} if "score" in state.results else {}
    held = {r["lead_id"]: r for r in state.records("sequence") if not r["go"]} if "sequence" in state.results else {}
    step = state.input.step
    records = []
    for lead in state.records("load"):
        key = str(lead["lead_id"])
        record = by_lead.pop(key, None)
        score = scored.get(key)
        if record is None and key in held:
            record = _derived({"lead_id": key, "to": lead.get("email"), "campaign_id": campaign.id, "step": step,
                               "status": "skipped", "reason": held[key]["reason"], "message_id": None}, held[key])
        elif record is None and score is not None and not score["icp_pass"]:
            record = _derived({"lead_id": key, "to": lead.get("email"), "campaign_id": campaign.id, "step": step,
                               "status": "skipped", "reason": "below_icp_threshold", "message_id": None,
                               "icp_score": score["icp_score"], "icp_reasons": score["icp_reasons"]}, score)
        elif record is None:
            error = why.get(key, {})
            record = _derived({"lead_id": key, "to": lead.get("email"), "campaign_id": campaign.id, "step": step,
                               "status": "failed", "reason": error.get("code", "draft_failed"),
                               "error": error.get("message"), "message_id": None}, lead)
        records.append(record)
    records.extend(by_lead.values())  # never expected: an outcome for a lead that was not loaded
    loaded = state["load"]["metadata"]
    score_meta = state["score"]["metadata"] if "score" in state.results else {}
    return Output(records, source=_SOURCE, counts=_counts(records), partial=bool(errors), errors=errors,
                  campaign_id=campaign.id, approval=campaign.approval, allow_delivery=allow_delivery,
                  requested=len(state.input.lead_ids), missing=loaded.get("missing", 0),
                  missing_ids=loaded.get("missing_ids", []),
                  icp={"scored": score_meta.get("scored", False), "threshold": score_meta.get("threshold"),
                       "passed": score_meta.get("passed"), "embedder": score_meta.get("embedder")},
                  llm=llm_totals(state.records("draft")))


def _released(state: FlowState, delivered: list[dict[str, Any]]) -> Output:
    """A released batch: the delivery outcome of each approved draft; the decided rest as they stand."""
    campaign: Campaign = state.input.campaign
    by_lead = {str(r["lead_id"]): r for r in delivered}
    decisions = state["approved"]["metadata"]["decisions"]
    records = []
    for draft in state.records("approved"):
        decision = decisions[str(draft["lead_id"])]
        record = by_lead.pop(str(draft["lead_id"]), None)
        if record is None:
            record = _derived({"lead_id": str(draft["lead_id"]), "to": draft["to"], "campaign_id": campaign.id,
                               "step": state.input.step, "status": decision["status"],
                               "draft_id": decision["draft_id"],
                               "reason": "rejected_by_operator" if decision["status"] == "rejected"
                               else "not_decided", "message_id": None}, draft)
        records.append(record)
    records.extend(by_lead.values())
    return Output(records, source=_SOURCE, counts=_counts(records), campaign_id=campaign.id,
                  approval=campaign.approval, allow_delivery=campaign.allow_delivery, release=True,
                  requested=len(state.input.lead_ids))


def _counts(records: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


def _derived(record: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    record[PROVENANCE] = make_provenance(record, source=_SOURCE, parents=[parent[PROVENANCE]["hash"]])
    return record
