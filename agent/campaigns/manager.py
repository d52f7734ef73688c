"""CampaignManager: turns triggers (manual, cron, events) into queued runs, each exactly once.

Every trigger has an idempotency key, and the run id is derived from it, so
the same trigger (a retried webhook, a scheduler that ticks twice, a double
click) finds the job it already queued instead of making a second run.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.campaigns.model import Campaign, CampaignStatus, load_campaign
from agent.errors import InvalidInput, NotFound
from agent.queues import Job
from agent.registry import Registry

__all__ = ["CampaignManager", "BUILTIN_FLOWS"]

# Flow name -> the orchestrator that runs it.
BUILTIN_FLOWS = {"lead": "lead_orchestrator", "delivery": "delivery_orchestrator",
                 "campaign": "campaign_orchestrator"}

_MOVES: dict[CampaignStatus, set[CampaignStatus]] = {
    "draft": {"active", "completed"},
    "active": {"paused", "completed"},
    "paused": {"active", "completed"},
    "completed": set(),
}


class CampaignManager:
    """Campaigns, their lifecycle and triggers; runs go to ``queue`` on ``topic``.

    A campaign trigger queues one ``campaign_flow`` job (the ``campaign_orchestrator``
    by default): a worker finds the campaign's leads and queues its batches on
    the same topic, each an outreach job, recorded in the audit store first.
    """

    def __init__(self, queue: Any, registry: Registry | None = None, *, topic: str = "orchestrate",
                 campaign_flow: str = "campaign", clock: Callable[[], datetime] | None = None) -> None:
        if registry is None:
            from agent.builtins import default_registry

            registry = default_registry()
        self.queue = queue
        self.registry = registry
        self.topic = topic
        self.campaign_flow = campaign_flow
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._flows: dict[str, str] = {k: v for k, v in BUILTIN_FLOWS.items() if v in registry}
        self._campaigns: dict[str, Campaign] = {}
        self._ticked: dict[str, datetime] = {}
        self._lock = threading.Lock()

    # -- flows -------------------------------------------------------------------------------
    def register_flow(self, name: str, orchestrator: str | None = None) -> None:
        """Let events and campaigns start ``name``; it runs the registered ``orchestrator`` (default: name)."""
        target = orchestrator or name
        if target not in self.registry:
            raise NotFound(target, [n for n in self.registry.list(kind="orchestrator")])
        self._flows[name] = target

    @property
    def flows(self) -> dict[str, str]:
        return dict(self._flows)

    # -- campaigns -------------------------------------------------------------------------------
    def add(self, campaign: Campaign | Mapping[str, Any] | str | Path) -> Campaign:
        """Register a campaign (a model, a mapping, or a YAML / JSON file); errors name the field."""
        if isinstance(campaign, (str, Path)):
            parsed = load_campaign(campaign)
        else:
            parsed = Campaign.parse(dict(campaign) if isinstance(campaign, Mapping) else campaign)
        with self._lock:
            self._campaigns[parsed.id] = parsed
        return parsed

    def get(self, campaign_id: str) -> Campaign:
        try:
            return self._campaigns[campaign_id]
        except KeyError:
            raise InvalidInput("campaign_id", f"no campaign {campaign_id!r}") from None

    def list(self) -> list[Campaign]:
        return sorted(self._campaigns.values(), key=lambda c: c.id)

    def activate(self, campaign_id: str) -> Campaign:
        campaign = self._move(campaign_id, "active")
        with self._lock:
            # A schedule fires from now on, never for the time the campaign was not active.
            self._ticked[campaign_id] = self.clock()
        return campaign

    def pause(self, campaign_id: str) -> Campaign:
        return self._move(campaign_id, "paused")

    def complete(self, campaign_id: str) -> Campaign:
        return self._move(campaign_id, "completed")

    # -- triggers ------------------------------------------------------------------------------
    def trigger(self, campaign_id: str, *, key: str | None = None) -> dict[str, str]:
        """Queue a run of an active campaign now; the same ``key`` never queues it twice."""
        campaign = self._active(campaign_id)
        trigger_key = f"campaign:{campaign.id}:manual:{key or self.clock().isoformat()}"
        return self._enqueue(self.campaign_flow, self._campaign_payload(campaign, trigger_key), trigger_key, campaign)

    def tick(self, now: datetime | None = None) -> list[dict[str, str]]:
        """Queue the runs whose cron time came since the last tick (each firing once)."""
        now = now or self.clock()
        queued = []
        for campaign in self.list():
            if campaign.status != "active" or campaign.schedule is None:
                continue
            since = self._ticked.get(campaign.id, now)
            for moment in campaign.fire_times(since, now):
                key = f"campaign:{campaign.id}:cron:{moment.astimezone(timezone.utc).isoformat()}"
                queued.append(self._enqueue(self.campaign_flow, self._campaign_payload(campaign, key), key, campaign))
            with self._lock:
                self._ticked[campaign.id] = now
        return queued

    def ingest_event(self, event: Mapping[str, Any]) -> dict[str, str]:
        """``{"flow", "context"[, "idempotency_key"]}`` -> ``{"status": "queued", "run_id", "job_id"}``."""
        if not isinstance(event, Mapping):
            raise InvalidInput("event", "must be an object with flow and context")
        unknown = set(event) - {"flow", "context", "idempotency_key"}
        if unknown:
            raise InvalidInput(f"event.{sorted(unknown)[0]}", "is not a known event field")
        flow, context = event.get("flow"), event.get("context", {})
        if not isinstance(flow, str) or flow not in self._flows:
            raise InvalidInput("flow", f"unknown flow {flow!r}; known: {', '.join(sorted(self._flows)) or 'none'}")
        if not isinstance(context, Mapping):
            raise InvalidInput("context", "must be an object")
        key = event.get("idempotency_key")
        if key is None:
            # The same event twice is the same trigger: its content is its key.
            key = "event:" + hashlib.sha256(json.dumps([flow, context], sort_keys=True, default=str)
                                            .encode()).hexdigest()
        elif not isinstance(key, str) or not 1 <= len(key) <= 200:
            raise InvalidInput("idempotency_key", "must be a string of 1 to 200 characters")
        return self._enqueue(flow, dict(context), key, None)

    # -- helpers -------------------------------------------------------------------------------
    def _enqueue(self, flow: str, payload: dict[str, Any], key: str, campaign: Campaign | None) -> dict[str, str]:
        orchestrator = self._flows.get(flow)
        if orchestrator is None:
            raise InvalidInput("flow", f"unknown flow {flow!r}; register it with register_flow()")
        run_id = _run_id(key)
        meta = {"flow": flow, "trigger": key}
        if campaign is not None:
            meta.update(campaign_id=campaign.id, tenant=campaign.tenant)
        job = Job(orchestrator=orchestrator, payload=payload, run_id=run_id, idempotency_key=key, meta=meta,
                  max_attempts=campaign.limits.max_attempts if campaign else 5)
        job_id = self.queue.enqueue(self.topic, job)
        return {"status": "queued", "run_id": run_id, "job_id": job_id}

    def _campaign_payload(self, campaign: Campaign, key: str) -> dict[str, Any]:
        # The run key is the trigger's: the same trigger plans the same batches under the same ids.
        return {"campaign": campaign.model_dump(mode="json"), "run_key": _run_id(key), "topic": self.topic}

    def _active(self, campaign_id: str) -> Campaign:
        campaign = self.get(campaign_id)
        if campaign.status != "active":
            raise InvalidInput("status", f"campaign {campaign_id!r} is {campaign.status}; activate it first")
        return campaign

    def _move(self, campaign_id: str, status: CampaignStatus) -> Campaign:
        with self._lock:
            campaign = self.get(campaign_id)
            if status not in _MOVES[campaign.status]:
                raise InvalidInput("status", f"campaign {campaign_id!r} cannot go from {campaign.status} to {status}")
            moved = campaign.model_copy(update={"status": status})
            self._campaigns[campaign_id] = moved
            return moved


def _run_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]
