"""Campaigns: definitions from files and code, lifecycle, and triggers that queue each run once."""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.audit import InMemoryAuditStore
from agent.campaigns import Campaign, CampaignManager, load_campaign
from agent.envelope import make_envelope
from agent.errors import InvalidInput, NotFound, PayloadError
from agent.queues import InMemoryQueue
from agent.registry import Registry
from agent.workers import Worker

YAML = """\
id: acme-q4
name: Acme accounts
lead_query: {company: Acme}
template:
  subject: "{{ lead.company }} and pipeline quality"
  body: "Hi {{ lead.first_name }}"
schedule: "*/15 * * * *"
limits: {per_run: 20, batch_size: 5}
"""


class Echo:
    def __init__(self) -> None:
        self.payloads: list[Mapping[str, Any]] = []

    def run(self, payload: Mapping[str, Any], *, run_id: str) -> dict[str, Any]:
        self.payloads.append(payload)
        return make_envelope([{"ok": True}], source="echo", run_id=run_id)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class CampaignFileTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agent-campaigns-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text, encoding="utf-8")
        return path

    def test_a_yaml_file_becomes_a_draft_campaign(self) -> None:
        campaign = load_campaign(self.write("c.yaml", YAML))
        self.assertEqual((campaign.id, campaign.status, campaign.limits.batch_size), ("acme-q4", "draft", 5))
        self.assertFalse(campaign.allow_delivery)

    def test_a_json_file_works_the_same(self) -> None:
        data = {"id": "j1", "lead_query": "fintech in Berlin", "template": {"subject": "Hi", "body": "Hello"}}
        self.assertEqual(load_campaign(self.write("c.json", json.dumps(data))).lead_query, "fintech in Berlin")

    def test_errors_name_the_field(self) -> None:
        cases = {
            "schedule": YAML.replace("*/15 * * * *", "61 * * * *"),
            "limits.batch_size": YAML.replace("batch_size: 5", "batch_size: 0"),
            "colour": YAML + "colour: blue\n",
            "timezone": YAML + "timezone: Mars/Olympus\n",
            "file": "id: [unclosed\n",
            "lead_query": YAML.replace("lead_query: {company: Acme}", "lead_query: 5"),
        }
        for field, text in cases.items():
            with self.subTest(field=field), self.assertRaises(PayloadError) as caught:
                load_campaign(self.write(f"{field}.yaml", text))
            self.assertEqual(caught.exception.field, field)

    def test_fire_times_follow_the_campaigns_time_zone(self) -> None:
        # Given 9:00 on weekdays in Berlin (UTC+1 in November)
        campaign = Campaign.parse({"id": "tz", "lead_query": "x", "template": {"subject": "s", "body": "b"},
                                   "schedule": "0 9 * * 1-5", "timezone": "Europe/Berlin"})
        start = datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)  # a Monday
        # When / Then it fires at 08:00 UTC
        [first] = campaign.fire_times(start, start + timedelta(hours=12))
        self.assertEqual(first.astimezone(timezone.utc).hour, 8)


class CampaignManagerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock(datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc))
        self.queue = InMemoryQueue()
        self.addCleanup(self.queue.stop)
        self.registry = Registry()
        self.echo = Echo()
        self.registry.register("campaign_orchestrator", self.echo, kind="orchestrator")
        self.registry.register("lead_orchestrator", Echo(), kind="orchestrator")
        self.manager = CampaignManager(self.queue, self.registry, clock=self.clock)
        self.campaign = self.manager.add(Campaign.parse({
            "id": "c1", "lead_query": "x", "template": {"subject": "s", "body": "b"}, "schedule": "*/15 * * * *"}))

    def ready(self) -> int:
        return self.queue.stats("orchestrate").ready

    def test_the_lifecycle_moves_draft_active_paused_completed(self) -> None:
        self.assertEqual(self.manager.activate("c1").status, "active")
        self.assertEqual(self.manager.pause("c1").status, "paused")
        self.assertEqual(self.manager.activate("c1").status, "active")
        self.assertEqual(self.manager.complete("c1").status, "completed")

    def test_a_completed_campaign_cannot_come_back(self) -> None:
        self.manager.complete("c1")
        with self.assertRaises(InvalidInput) as caught:
            self.manager.activate("c1")
        self.assertEqual(caught.exception.field, "status")

    def test_a_draft_campaign_cannot_be_triggered(self) -> None:
        with self.assertRaises(InvalidInput):
            self.manager.trigger("c1", key="k")
        self.assertEqual(self.ready(), 0)

    def test_the_same_manual_trigger_queues_one_run(self) -> None:
        self.manager.activate("c1")
        first = self.manager.trigger("c1", key="click-1")
        second = self.manager.trigger("c1", key="click-1")
        self.assertEqual(first, second)
        self.assertEqual((first["status"], self.ready()), ("queued", 1))

    def test_the_schedule_fires_each_time_once(self) -> None:
        # Given an active campaign every 15 minutes, activated at 10:00
        self.manager.activate("c1")
        # When the scheduler ticks at 10:31, again at 10:31, then at 10:46
        self.clock.now += timedelta(minutes=31)
        first = self.manager.tick()
        again = self.manager.tick()
        self.clock.now += timedelta(minutes=15)
        later = self.manager.tick()
        # Then 10:15 and 10:30 fired, nothing twice, then 10:45
        self.assertEqual((len(first), len(again), len(later)), (2, 0, 1))
        self.assertEqual(self.ready(), 3)

    def test_a_second_scheduler_over_the_same_window_adds_nothing(self) -> None:
        # Given two managers (two scheduler processes) on one queue
        self.manager.activate("c1")
        other = CampaignManager(self.queue, self.registry, clock=self.clock)
        other.add(self.manager.get("c1"))
        other._ticked["c1"] = self.manager._ticked["c1"]
        # When both tick over the same half hour
        self.clock.now += timedelta(minutes=31)
        mine, theirs = self.manager.tick(), other.tick()
        # Then the runs are the same ones, queued once
        self.assertEqual(mine, theirs)
        self.assertEqual(self.ready(), 2)

    def test_an_event_is_queued_once_with_its_run_id(self) -> None:
        event = {"flow": "lead", "context": {"lead_query": {"company": "Acme"}}}
        first, second = self.manager.ingest_event(event), self.manager.ingest_event(dict(event))
        self.assertEqual(first, second)
        self.assertEqual((set(first), self.ready()), ({"status", "run_id", "job_id"}, 1))

    def test_an_unknown_flow_is_refused_and_nothing_is_queued(self) -> None:
        with self.assertRaises(InvalidInput) as caught:
            self.manager.ingest_event({"flow": "nope", "context": {}})
        self.assertEqual((caught.exception.field, self.ready()), ("flow", 0))

    def test_a_malformed_event_names_the_field(self) -> None:
        for event, field in (({"flow": "lead", "context": []}, "context"),
                             ({"flow": "lead", "extra": 1}, "event.extra"),
                             ({"flow": "lead", "context": {}, "idempotency_key": ""}, "idempotency_key")):
            with self.subTest(field=field), self.assertRaises(InvalidInput) as caught:
                self.manager.ingest_event(event)
            self.assertEqual(caught.exception.field, field)
        self.assertEqual(self.ready(), 0)

    def test_registering_a_flow_for_an_unknown_orchestrator_is_refused(self) -> None:
        with self.assertRaises(NotFound):
            self.manager.register_flow("x", "no_such_orchestrator")

    def test_a_triggered_run_is_carried_out_by_a_worker_and_audited(self) -> None:
        # Given an active campaign, triggered
        self.manager.activate("c1")
        queued = self.manager.trigger("c1", key="now")
        audit = InMemoryAuditStore()
        # When a worker takes it
        Worker(self.queue, self.registry, audit_store=audit).run_once(timeout=0)
        # Then the orchestrator got the campaign, under the trigger's run id
        self.assertEqual(self.echo.payloads[0]["campaign"]["id"], "c1")
        self.assertEqual(audit.get_run(queued["run_id"]).state, "succeeded")


if __name__ == "__main__":
    unittest.main()
