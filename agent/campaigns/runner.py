"""The main job, embedded: a campaign's leads in batch jobs, run by worker threads, audited.

``CampaignRunner.start(campaign)`` finds the campaign's leads (up to
``limits.per_run``), cuts them into batches of ``limits.batch_size`` and
queues one ``outreach_orchestrator`` job per batch.  Each batch is recorded
in the audit store as ``queued`` before its job exists, with what it needs to
run again (the campaign and its lead ids), so ``resume`` can re-queue every
batch a killed process left unfinished, under the same run id.  Sends are
idempotent per (campaign, lead, step) in the outbox ledger, so a batch run
twice never sends twice.  Fan-in (how many batches are done) is counted in
the audit store, not in the queue.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.audit import AuditStore, SqlAuditStore
from agent.campaigns.model import Campaign
from agent.errors import PayloadError
from agent.queues import InMemoryQueue, Job, JobQueue, Queue, check_topic
from agent.registry import Registry
from agent.settings import Settings, get_settings
from agent.workers import Worker

__all__ = ["CampaignRunner", "CampaignReport"]

TOPIC = "campaigns"
ORCHESTRATOR = "outreach_orchestrator"
_OPEN = ["queued", "running", "failed"]
_DONE = ("succeeded", "dead")


@dataclass
class CampaignReport:
    campaign_id: str
    run_key: str
    batches: int
    leads: int
    states: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def finished(self) -> bool:
        return sum(self.states[s] for s in _DONE) == self.batches


class CampaignRunner:
    """Plans, queues, runs and reports campaign runs on the embedded defaults."""

    def __init__(self, settings: Settings | None = None, *, registry: Registry | None = None,
                 audit: AuditStore | None = None, queue: JobQueue | None = None, topic: str = TOPIC) -> None:
        from agent.builtins import bound_registry
        from agent.storage.db import Database

        self.settings = settings or get_settings()
        self.registry = bound_registry(self.settings, registry)
        self.audit = audit or SqlAuditStore(Database.for_settings(self.settings))
        self.queue = queue or InMemoryQueue(visibility_timeout=600)
        self.topic = check_topic(topic)

    # -- planning ------------------------------------------------------------------------------
    def find_leads(self, campaign: Campaign) -> list[int]:
        """The campaign's lead ids, best match first, at most ``limits.per_run``."""
        orchestrator = self.registry.resolve("lead_orchestrator")
        query = {"text": campaign.lead_query} if isinstance(campaign.lead_query, str) else dict(campaign.lead_query)
        ids: list[int] = []
        offset = 0
        while len(ids) < campaign.limits.per_run:
            page = min(500, campaign.limits.per_run - len(ids))
            envelope = orchestrator.run({"lead_query": {**query, "limit": page, "offset": offset}})
            ids.extend(int(r["lead_id"]) for r in envelope["records"])
            offset = envelope["metadata"].get("next_offset") or 0
            if not offset or not envelope["records"]:
                break
        return list(dict.fromkeys(ids))[: campaign.limits.per_run]

    def start(self, campaign: Campaign, *, run_key: str | None = None,
              lead_ids: list[int] | None = None) -> CampaignReport:
        """Record and queue one job per batch of leads; returns the run's report (nothing done yet)."""
        if campaign.tenant != self.settings.tenant:
            raise PayloadError("campaign.tenant", f"is {campaign.tenant!r}, but this store works for tenant "
                                                  f"{self.settings.tenant!r} (set AGENT_TENANT)")
        run_key = run_key or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        ids = self.find_leads(campaign) if lead_ids is None else list(lead_ids)
        size = campaign.limits.batch_size
        batches = [ids[i:i + size] for i in range(0, len(ids), size)]
        dump = campaign.model_dump(mode="json")
        # The whole plan is recorded before any job is queued: a crash in between loses no batch.
        for index, batch in enumerate(batches):
            self.audit.start_run(batch_run_id(campaign.id, run_key, index), orchestrator=ORCHESTRATOR,
                                 campaign_id=campaign.id, tenant=campaign.tenant,
                                 meta={"campaign_run": run_key, "batch": index, "lead_ids": batch, "campaign": dump})
        for index, batch in enumerate(batches):
            self._enqueue(batch_run_id(campaign.id, run_key, index), campaign.id, run_key, index, dump, batch,
                          campaign.limits.max_attempts)
        return self.report(campaign.id, run_key)

    def resume(self, campaign_id: str) -> list[CampaignReport]:
        """Re-queue every batch of ``campaign_id`` left queued, running or failed; one report per run."""
        open_runs = [r for r in self.audit.list_runs(campaign_id=campaign_id, state=_OPEN, limit=100_000)
                     if r.orchestrator == ORCHESTRATOR and "campaign_run" in r.meta]  # batches of ours only
        keys: list[str] = []
        for run in open_runs:
            meta = run.meta
            key = meta["campaign_run"]
            if key not in keys:
                keys.append(key)
            campaign = Campaign.parse(meta["campaign"])
            self._enqueue(run.run_id, campaign_id, key, meta["batch"], meta["campaign"], meta["lead_ids"],
                          campaign.limits.max_attempts, resumed=True)
        recover = getattr(self.queue, "recover", None)
        if open_runs and recover is not None:
            # A broker may have lost the messages of jobs it still had: send them again (copies are harmless).
            recover(self.topic, after=0)
        return [self.report(campaign_id, key) for key in keys]

    # -- running -------------------------------------------------------------------------------
    def work(self, reports: list[CampaignReport], *, threads: int = 4,
             progress: Callable[[CampaignReport], None] | None = None, poll: float = 0.2) -> list[CampaignReport]:
        """Wait until no queued batch is left, then return fresh reports.

        On a pull queue (the in-memory default) the batches run here, on
        ``threads`` worker threads; on a broker (Celery) they run on its workers
        (``agent worker --backend celery``) and this only watches.
        """
        worker = None
        if isinstance(self.queue, Queue):
            worker = Worker(self.queue, self.registry, topic=self.topic, audit_store=self.audit, poll=poll,
                            retry_base=self.settings.retry_base)
            worker.start(threads)
        try:
            while not self.queue.join(self.topic, timeout=poll):
                if progress is not None:
                    for report in reports:
                        progress(self.report(report.campaign_id, report.run_key))
        finally:
            if worker is not None:
                worker.stop()
                worker.join()
        return [self.report(r.campaign_id, r.run_key) for r in reports]

    def report(self, campaign_id: str, run_key: str) -> CampaignReport:
        """What the audit store says about one campaign run: batch states, message statuses."""
        runs = [r for r in self.audit.list_runs(campaign_id=campaign_id, limit=100_000)
                if r.meta.get("campaign_run") == run_key]
        report = CampaignReport(campaign_id, run_key, len(runs), sum(len(r.meta.get("lead_ids", ())) for r in runs))
        for run in runs:
            report.states[run.state] += 1
            if run.state == "succeeded":
                envelopes = self.audit.envelopes(run.run_id)
                final = envelopes[-1].envelope if envelopes else {"records": []}
                report.statuses.update(r.get("status", "unknown") for r in final["records"])
        return report

    def _enqueue(self, run_id: str, campaign_id: str, run_key: str, index: int, campaign: dict[str, Any],
                 lead_ids: list[int], max_attempts: int, *, resumed: bool = False) -> str:
        job = Job(orchestrator=ORCHESTRATOR, run_id=run_id, payload={"campaign": campaign, "lead_ids": lead_ids},
                  idempotency_key=f"campaign:{campaign_id}:{run_key}:batch:{index}", max_attempts=max_attempts,
                  meta={"campaign_id": campaign_id, "campaign_run": run_key, "batch": index, "resumed": resumed})
        return self.queue.enqueue(self.topic, job)


def batch_run_id(campaign_id: str, run_key: str, index: int) -> str:
    """A batch's run id: the same batch of the same campaign run always has the same id."""
    return hashlib.sha256(f"{campaign_id}:{run_key}:{index}".encode()).hexdigest()[:32]
