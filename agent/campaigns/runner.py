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

``work`` runs the batches on worker threads of this process, each handing
its job to a worker process (``agent.workers.processes``) when the
``processes`` setting asks for them (``auto``: one per core, at most 4, for a
run of several batches on the registry bound to the settings): drafting from
a template is pure Python, and threads of one process take turns on the GIL.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from agent.audit import AuditStore, SqlAuditStore
from agent.campaigns.model import Campaign, check_tenant
from agent.clock import clock_from
from agent.errors import InvalidInput
from agent.campaigns.planning import (
    MAX_PART,
    ORCHESTRATOR,
    PLANNER,
    batch_plan,
    find_leads,
    plan_batches,
    planning_plan,
    record_plans,
    release_plan,
)
from agent.queues import InMemoryQueue, JobQueue, Queue, check_topic
from agent.registry import Registry
from agent.settings import Settings, get_settings
from agent.workers import Worker

__all__ = ["CampaignRunner", "CampaignReport"]

TOPIC = "campaigns"
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
    planning: int = 0  # parts of the run's search not done yet (planned in parts): more batches may come
    planning_dead: int = 0  # parts that gave up: the leads they would have found have no batch

    @property
    def finished(self) -> bool:
        return not self.planning and sum(self.states[s] for s in _DONE) == self.batches


class CampaignRunner:
    """Plans, queues, runs and reports campaign runs on the embedded defaults."""

    def __init__(self, settings: Settings | None = None, *, registry: Registry | None = None,
                 audit: AuditStore | None = None, queue: JobQueue | None = None, topic: str = TOPIC) -> None:
        from agent.builtins import bound_registry
        from agent.storage.db import Database

        self.settings = settings or get_settings()
        # ``auto`` forks worker processes only for the registry and audit store the settings give (see
        # processes_for): a child writing to its copy of an in-memory store would leave this one empty.
        self._portable_registry = registry is None and audit is None
        self.registry = bound_registry(self.settings, registry)
        self.clock = clock_from(self.registry)
        self.audit = audit or SqlAuditStore(Database.for_settings(self.settings))
        self.queue = queue or InMemoryQueue(visibility_timeout=600)
        self.topic = check_topic(topic)
        self._topics = {self.topic}  # and those a resume queued batches on (their own)

    # -- planning ------------------------------------------------------------------------------
    def find_leads(self, campaign: Campaign) -> list[int]:
        """The campaign's lead ids, best match first, at most ``limits.per_run``."""
        return find_leads(self.registry.resolve("lead_orchestrator"), campaign)

    def start(self, campaign: Campaign, *, run_key: str | None = None, lead_ids: list[int] | None = None,
              part_size: int | None = None) -> CampaignReport:
        """Record and queue one job per batch of leads; returns the run's report (nothing done yet).

        With ``part_size`` (and no ``lead_ids``) the search is queued instead, in
        parts of about that many leads (``campaign_orchestrator``): a worker plans
        each part's batches and queues them behind the next part, so the first
        batches run while the search reads on.  The report then counts only the
        batches planned so far (``report.planning`` says whether more may come).
        """
        check_tenant(campaign, self.settings.tenant, who="this store (AGENT_TENANT)")
        run_key = run_key or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        if part_size is not None and lead_ids is None:
            if isinstance(part_size, bool) or not isinstance(part_size, int) or not 1 <= part_size <= MAX_PART:
                raise InvalidInput("part_size", f"must be an integer from 1 to {MAX_PART}")
            plans = [planning_plan(campaign, run_key, topic=self.topic, part_size=part_size)]
        else:
            ids = self.find_leads(campaign) if lead_ids is None else list(lead_ids)
            plans = plan_batches(campaign, run_key, ids, topic=self.topic)
        record_plans(self.audit, plans, tenant=campaign.tenant)
        self.queue.enqueue_many(self.topic, [plan.job for plan in plans])
        return self.report(campaign.id, run_key)

    def resume(self, campaign_id: str) -> list[CampaignReport]:
        """Re-queue every batch of ``campaign_id`` left queued, running or failed; one report per run."""
        open_runs = [r for r in self.audit.list_runs(campaign_id=campaign_id, state=_OPEN, limit=100_000)
                     if (r.orchestrator == ORCHESTRATOR and "campaign_run" in r.meta)  # batches of ours only
                     or (r.orchestrator == PLANNER and "campaign_planning" in r.meta)]  # and planning parts
        keys: list[str] = []
        topics: set[str] = set()
        for run in open_runs:
            meta = run.meta
            key = meta.get("campaign_run") or meta["campaign_planning"]
            if key not in keys:
                keys.append(key)
            topic = meta.get("topic", self.topic)
            if "campaign_planning" in meta:  # a planning part: the search goes on from where it stopped
                saved = meta["payload"]
                plan = planning_plan(saved["campaign"], saved["run_key"], topic=topic, part_size=saved["part_size"],
                                     part=saved["part"], cursor=saved["cursor"], next_batch=saved["next_batch"],
                                     planned=saved["planned"], carry=saved["carry"])
            elif meta.get("release"):  # a held batch's delivery: queued again under its own key
                plan = release_plan(meta["released_from"], {**meta, "campaign_run": meta["campaign_run"]
                                                            .removesuffix(":release")}, topic=topic)
            else:
                plan = batch_plan(Campaign.parse(meta["campaign"]), meta["campaign_run"], meta["batch"],
                                  meta["lead_ids"], topic=topic, resumed=True, step=meta.get("step", 1))
            self.queue.enqueue(topic, plan.job)
            topics.add(topic)
            self._topics.add(topic)
        recover = getattr(self.queue, "recover", None)
        if recover is not None:
            # A broker may have lost the messages of jobs it still had: send them again (copies are harmless).
            for topic in sorted(topics):
                recover(topic, after=0)
        return [self.report(campaign_id, key) for key in keys]

    def follow_ups(self, campaign: Campaign, *, lease_seconds: float = 3600) -> list[CampaignReport]:
        """Queue every sequence step of ``campaign`` that is due now: one outreach job per step and
        batch of leads, recorded first like any batch.  Each lead queued is leased for
        ``lease_seconds`` (longer for a paced campaign: twice a batch's jitter) and not due again
        meanwhile; a lost job's leads come due again after it, and the outbox key keeps a step from
        going out twice.  One report per step queued."""
        from agent.sequences import EnrolmentStore
        from agent.storage.db import Database

        check_tenant(campaign, self.settings.tenant, who="this store (AGENT_TENANT)")
        store = EnrolmentStore(Database.for_settings(self.settings), tenant=campaign.tenant, clock=self.clock)
        by_step: dict[int, list[int]] = {}
        steps = campaign.template.waits()
        for enrolment in store.due(campaign.id):
            if enrolment.lead_id.isdigit() and enrolment.next_step in steps:
                by_step.setdefault(enrolment.next_step, []).append(int(enrolment.lead_id))
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%S%fZ")
        # A paced batch may wait out its jitter before every message: the lease outlasts that.
        jitter = campaign.pacing.jitter_seconds[1] if campaign.pacing is not None else 0
        lease = max(lease_seconds, 2 * jitter * campaign.limits.batch_size)
        reports = []
        for step, lead_ids in sorted(by_step.items()):
            # Only the leads this tick takes are queued: an overlapping tick gets none of them.
            taken = {int(i) for i in store.lease(campaign.id, [str(i) for i in lead_ids], step, seconds=lease)}
            lead_ids = [i for i in lead_ids if i in taken]
            if not lead_ids:
                continue
            run_key = f"{stamp}:step{step}"
            plans = plan_batches(campaign, run_key, lead_ids, topic=self.topic, step=step)
            record_plans(self.audit, plans, tenant=campaign.tenant)
            self.queue.enqueue_many(self.topic, [plan.job for plan in plans])
            reports.append(self.report(campaign.id, run_key))
        return reports

    def release(self, run_ids: list[str]) -> list[CampaignReport]:
        """Queue the delivery of each held batch (a run whose drafts waited for approval) that has no
        draft left undecided; the others wait.  Returns a report per release (nothing done yet)."""
        from agent.drafts import DraftStore
        from agent.storage.db import Database

        pending = DraftStore(Database.for_settings(self.settings), tenant=self.settings.tenant).pending_runs(run_ids)
        reports: dict[tuple[str, str], None] = {}
        for run_id in dict.fromkeys(run_ids):
            run = self.audit.get_run(run_id)
            if pending.get(run_id) or run is None or "campaign_run" not in run.meta or run.meta.get("release"):
                continue
            topic = run.meta.get("topic", self.topic)
            plan = release_plan(run_id, run.meta, topic=topic)
            record_plans(self.audit, [plan], tenant=self.settings.tenant)
            self.queue.enqueue(topic, plan.job)
            self._topics.add(topic)
            reports[(plan.job.meta["campaign_id"], plan.meta["campaign_run"])] = None
        return [self.report(campaign_id, key) for campaign_id, key in reports]

    # -- running -------------------------------------------------------------------------------
    def work(self, reports: list[CampaignReport], *, threads: int = 4,
             progress: Callable[[CampaignReport], None] | None = None, poll: float = 0.2,
             timeout: float | None = None, processes: int | str | None = None) -> list[CampaignReport]:
        """Wait until no queued batch is left, then return fresh reports.

        On a pull queue (the in-memory default) the batches run here, on
        ``threads`` worker threads, or on ``processes`` worker processes (default:
        the ``processes`` setting; see ``processes_for``); on a broker (Celery)
        they run on its workers (``agent worker --backend celery``) and this only
        watches, for at most ``timeout`` seconds when given.
        """
        workers = []
        pool = None
        if isinstance(self.queue, Queue):
            count = self.processes_for(reports, processes, threads=threads)
            if count:
                from agent.workers.processes import ProcessPool

                # This process runs batches too: one thread more than children.
                pool = ProcessPool(count, registry=self.registry, audit=self.audit,
                                   retry_base=self.settings.retry_base, local=True)
                pool.start()  # forked before the worker threads start
            for topic in sorted(self._topics):
                worker = Worker(self.queue, self.registry, topic=topic, audit_store=self.audit, poll=poll,
                                retry_base=self.settings.retry_base, execute=pool.execute if pool else None)
                worker.start(count + 1 if count else threads)
                workers.append(worker)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not all(self.queue.join(topic, timeout=poll / len(self._topics)) for topic in sorted(self._topics)):
                if deadline is not None and time.monotonic() > deadline:
                    break  # the caller stops watching; the reports say what is left
                if progress is not None:
                    for report in reports:
                        # Batch states only: counting messages reads every finished batch's envelope.
                        progress(self.report(report.campaign_id, report.run_key, messages=False))
        finally:
            for worker in workers:
                worker.stop()
            for worker in workers:
                worker.join()
            if pool is not None:
                pool.close()
        return [self.report(r.campaign_id, r.run_key) for r in reports]

    def processes_for(self, reports: list[CampaignReport], processes: int | str | None = None, *,
                      threads: int | None = None) -> int:
        """How many worker processes ``work`` forks besides this one, which runs batches too (0: threads
        of this process only).  ``auto`` makes one process per core, this one included, at most 4 and
        at most one per batch left; none for a single batch, off Linux (no
        parent-death signal there), nor for a registry or audit store built in code (the children are
        forked copies: what a test's agent records, an in-memory audit, or a frozen clock moved later
        would stay in them), and no more than ``threads`` processes in all (the jobs at once a user
        allows, e.g. ``--threads 1`` for one SMTP session at a time).  A number asks for that many."""
        from agent.workers.processes import MAX_PROCESSES, default_processes

        wanted = self.settings.processes if processes is None else processes
        if wanted == "auto":
            left = sum(r.batches - sum(r.states[s] for s in _DONE) for r in reports)
            if any(r.planning for r in reports):
                left = max(left, MAX_PROCESSES)  # planned in parts: how many batches will come is not known yet
            portable = self._portable_registry and sys.platform.startswith("linux")
            count = min(default_processes(), left) if portable else 0
            if threads is not None:
                count = min(count, threads)  # jobs at once, whether on threads or processes
            return count - 1 if count > 1 else 0
        if isinstance(wanted, bool) or not isinstance(wanted, int) or not 0 <= wanted <= MAX_PROCESSES:
            raise InvalidInput("processes", f"must be auto or an integer from 0 to {MAX_PROCESSES}")
        return wanted

    def report(self, campaign_id: str, run_key: str, *, messages: bool = True) -> CampaignReport:
        """What the audit store says about one campaign run: batch states, and message statuses
        (unless ``messages`` is False: they are read from every finished batch's last envelope)."""
        every = self.audit.list_runs(campaign_id=campaign_id, limit=100_000)
        runs = [r for r in every if r.meta.get("campaign_run") == run_key]
        report = CampaignReport(campaign_id, run_key, len(runs), sum(len(r.meta.get("lead_ids", ())) for r in runs))
        parts = [r for r in every if r.meta.get("campaign_planning") == run_key]
        report.planning = sum(1 for r in parts if r.state not in _DONE)
        report.planning_dead = sum(1 for r in parts if r.state == "dead")
        for run in runs:
            report.states[run.state] += 1
            if messages and run.state == "succeeded":
                final = self.audit.last_envelope(run.run_id)
                report.statuses.update(r.get("status", "unknown") for r in (final.envelope["records"] if final else ()))
        return report
