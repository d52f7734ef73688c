"""How a campaign run becomes batch jobs: its leads, its batches, their run ids and jobs.

Shared by ``CampaignRunner.start`` (planning in the caller) and the
``campaign_orchestrator`` (planning as a queued job, for triggers).  The same
campaign run always yields the same run ids and idempotency keys, so planning
it twice queues nothing twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.campaigns.model import Campaign
from agent.queues.base import Job

__all__ = ["BatchPlan", "find_leads", "find_part", "lead_pages", "plan_batches", "batch_plan", "planning_plan",
           "record_plans", "batch_run_id", "ORCHESTRATOR", "PLANNER", "PLAN_PART", "MAX_PART"]

ORCHESTRATOR = "outreach_orchestrator"
PLANNER = "campaign_orchestrator"
# Leads a planning part reads before it queues their batches (``agent campaign run`` plans in parts).
PLAN_PART = 1000
MAX_PART = 100_000  # the most a part may be asked to read
_PAGE = 500


@dataclass(frozen=True)
class BatchPlan:
    """One batch: the job that runs it, and what the audit store keeps to run it again."""

    job: Job
    meta: dict[str, Any]


def find_leads(lead_orchestrator: Any, campaign: Campaign) -> list[int]:
    """The campaign's lead ids, best match first, at most ``limits.per_run``.

    Only ids are read (each batch's job loads its leads).  A query of filters
    alone is read in keyset pages (``after_id``): each page
    reads on from where the last ended, and nothing is counted.  A name or
    company query (ordered by its fuzzy score) and free text (which may name a
    company) are read by offset.
    """
    ids: list[int] = []
    for page, _ in lead_pages(lead_orchestrator, campaign, None, campaign.limits.per_run):
        ids.extend(page)
    return list(dict.fromkeys(ids))[: campaign.limits.per_run]


def find_part(lead_orchestrator: Any, campaign: Campaign, cursor: dict[str, int] | None, *, have: int,
              size: int) -> tuple[list[int], dict[str, int] | None]:
    """At least ``size`` more lead ids from ``cursor`` (None: the first page), fewer at the end of
    the search or of ``limits.per_run`` (of which the run ``have`` already), with the cursor of the
    page after them (None: nothing more to read)."""
    ids: list[int] = []
    following = cursor
    for page, following in lead_pages(lead_orchestrator, campaign, cursor, campaign.limits.per_run - have):
        ids.extend(page)
        if len(ids) >= size:
            break
    return list(dict.fromkeys(ids)), following


def lead_pages(lead_orchestrator: Any, campaign: Campaign, cursor: dict[str, int] | None,
               wanted: int) -> Iterator[tuple[list[int], dict[str, int] | None]]:
    """The campaign's lead ids page by page from ``cursor``, at most ``wanted`` in all, each page
    with the cursor of the one after it (None after the last)."""
    query = {"text": campaign.lead_query} if isinstance(campaign.lead_query, str) else dict(campaign.lead_query)
    for paging in ("limit", "offset", "after_id", "ids_only"):  # planning pages on its own
        query.pop(paging, None)
    if cursor is None:
        keyset = not (query.get("name") or query.get("company") or query.get("text"))
        cursor = {"after_id": 0} if keyset else {"offset": 0}
    keyset = "after_id" in cursor
    got = 0
    while got < wanted:
        page = min(_PAGE, wanted - got)
        envelope = lead_orchestrator.run({"lead_query": {**query, "limit": page, "ids_only": True, **cursor}})
        ids = [int(r["lead_id"]) for r in envelope["records"]]
        got += len(ids)
        meta = envelope["metadata"]
        if keyset and "next_after_id" not in meta:
            keyset = False  # a lead orchestrator that pages by offset only: the first page was its offset 0
        following = meta.get("next_after_id" if keyset else "next_offset")
        if following is None or not ids or got >= wanted:
            yield ids, None
            return
        cursor = {"after_id": following} if keyset else {"offset": following}
        yield ids, cursor


def plan_batches(campaign: Campaign, run_key: str, lead_ids: list[int], *, topic: str,
                 step: int = 1, first: int = 0) -> list[BatchPlan]:
    """``lead_ids`` cut into ``limits.batch_size`` batches, one outreach job each (of sequence step
    ``step``), for ``topic``; the first is batch number ``first``."""
    size = campaign.limits.batch_size
    return [batch_plan(campaign, run_key, first + index, list(lead_ids[start:start + size]), topic=topic, step=step)
            for index, start in enumerate(range(0, len(lead_ids), size))]


def planning_plan(campaign: Campaign | dict[str, Any], run_key: str, *, topic: str, part_size: int, part: int = 0,
                  cursor: dict[str, int] | None = None, next_batch: int = 0, planned: int = 0,
                  carry: list[int] | None = None) -> BatchPlan:
    """Part ``part`` of a campaign run's planning, as a ``campaign_orchestrator`` job: it reads about
    ``part_size`` more leads from ``cursor``, queues their batches (numbered from ``next_batch``;
    ``planned`` leads are in earlier ones) and the next part.  ``carry`` holds the ids the last part
    found short of a whole batch.  Always the same run id and idempotency key for the same part."""
    dump = campaign if isinstance(campaign, dict) else campaign.model_dump(mode="json")
    payload: dict[str, Any] = {"campaign": dump, "run_key": run_key, "topic": topic, "part_size": part_size,
                               "part": part, "cursor": cursor, "next_batch": next_batch, "planned": planned,
                               "carry": list(carry or [])}
    campaign_id = dump["id"]
    run_id = hashlib.sha256(f"{campaign_id}:{run_key}:plan:{part}".encode()).hexdigest()[:32]
    job = Job(orchestrator=PLANNER, run_id=run_id, payload=payload,
              idempotency_key=f"campaign:{campaign_id}:{run_key}:plan:{part}",
              max_attempts=int(dump["limits"]["max_attempts"]),
              meta={"campaign_id": campaign_id, "campaign_planning": run_key, "part": part})
    return BatchPlan(job, {"campaign_planning": run_key, "part": part, "payload": payload, "topic": topic})


def batch_plan(campaign: Campaign, run_key: str, index: int, lead_ids: list[int], *, topic: str,
               resumed: bool = False, step: int = 1) -> BatchPlan:
    """Batch ``index`` of a campaign run: always the same run id and idempotency key.  The topic is
    kept with it: a resume queues the batch where its idempotency key lives."""
    dump = campaign.model_dump(mode="json")
    payload: dict[str, Any] = {"campaign": dump, "lead_ids": lead_ids}
    if step > 1:
        payload["step"] = step
    job = Job(orchestrator=ORCHESTRATOR, run_id=batch_run_id(campaign.id, run_key, index),
              payload=payload,
              idempotency_key=f"campaign:{campaign.id}:{run_key}:batch:{index}",
              max_attempts=campaign.limits.max_attempts,
              meta={"campaign_id": campaign.id, "campaign_run": run_key, "batch": index, "resumed": resumed})
    return BatchPlan(job, {"campaign_run": run_key, "batch": index, "lead_ids": lead_ids, "campaign": dump,
                           "topic": topic, "step": step})


def release_plan(held_run_id: str, meta: dict[str, Any], *, topic: str) -> BatchPlan:
    """The job that delivers a held batch's approved drafts, once every draft is decided.  Its run id
    and idempotency key derive from the held run: releasing the same batch twice queues one job."""
    campaign = meta["campaign"]
    key = f"{meta['campaign_run']}:release"
    payload: dict[str, Any] = {"campaign": campaign, "lead_ids": meta["lead_ids"], "release": True}
    if meta.get("step", 1) > 1:
        payload["step"] = meta["step"]
    job = Job(orchestrator=ORCHESTRATOR, run_id=hashlib.sha256(f"release:{held_run_id}".encode()).hexdigest()[:32],
              payload=payload,
              idempotency_key=f"release:{held_run_id}", max_attempts=int(campaign["limits"]["max_attempts"]),
              meta={"campaign_id": campaign["id"], "campaign_run": key, "batch": meta["batch"],
                    "released_from": held_run_id})
    return BatchPlan(job, {"campaign_run": key, "batch": meta["batch"], "lead_ids": meta["lead_ids"],
                           "campaign": campaign, "topic": topic, "released_from": held_run_id, "release": True,
                           "step": meta.get("step", 1)})


def record_plans(audit: Any, plans: list[BatchPlan], *, tenant: str) -> None:
    """Record every batch as a queued run, before any job exists: a crash in between loses no batch
    (``CampaignRunner.resume`` finds them).  Recording a batch again changes nothing."""
    for plan in plans:
        job = plan.job
        audit.start_run(job.run_id, orchestrator=job.orchestrator, campaign_id=job.meta["campaign_id"],
                        tenant=tenant, meta=plan.meta)


def batch_run_id(campaign_id: str, run_key: str, index: int) -> str:
    """A batch's run id: the same batch of the same campaign run always has the same id."""
    return hashlib.sha256(f"{campaign_id}:{run_key}:{index}".encode()).hexdigest()[:32]
