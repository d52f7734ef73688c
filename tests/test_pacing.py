"""The sending pacer: send windows in the campaign's zone, daily caps and warm-up, per-domain rates,
jitter, and the bounce/complaint guard that pauses a mailbox.  On a SQLite file, and on PostgreSQL
with USE_REAL_TESTS=1.  Time is an injected clock: nothing sleeps."""

from __future__ import annotations

import random
import threading
import unittest
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from sqlalchemy import select

from agent.delivery.pacing import AutoPause, Pacer, Pacing, SendWindow, WarmUp
from agent.storage.models import PacingSlotRow
from tests.support import TempHome, postgres_home, requires_real_services

BERLIN = ZoneInfo("Europe/Berlin")
MAILBOX = "sales@acme.example"
OFFICE_HOURS = SendWindow()  # Monday to Friday, 09:00 to 17:00


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class PacerContract:
    def make_home(self) -> TempHome:
        raise NotImplementedError

    def setUp(self) -> None:
        home = self.make_home()
        self.addCleanup(home.cleanup)
        self.db = home.database()
        self.clock = Clock(berlin(2026, 3, 3, 10, 0))  # a Tuesday morning
        self.pacer = Pacer(self.db, clock=self.clock, rng=random.Random(7))

    def acquire(self, policy: Pacing, to: str = "bob@buyer.example", **kwargs: object):
        kwargs.setdefault("zone", "Europe/Berlin")
        return self.pacer.acquire(policy, mailbox=MAILBOX, to=to, **kwargs)

    def allowed(self, policy: Pacing, count: int) -> list[bool]:
        return [self.acquire(policy, to=f"lead{i}@buyer{i}.example").allowed for i in range(count)]

    # -- window ----------------------------------------------------------------------------------
    def test_friday_evening_waits_for_monday_morning_in_the_campaign_zone(self) -> None:
        # Given a Friday 18:00 in Berlin (CET, UTC+1)
        self.clock.now = berlin(2026, 3, 6, 18, 0)
        # When a send is asked for
        decision = self.acquire(Pacing(window=OFFICE_HOURS))
        # Then it is refused until Monday 09:00 Berlin, given in UTC
        self.assertEqual((decision.allowed, decision.reason), (False, "outside_window"))
        self.assertEqual(decision.not_before, datetime(2026, 3, 9, 8, 0, tzinfo=timezone.utc))

    def test_the_next_opening_across_a_dst_change_uses_that_day_s_offset(self) -> None:
        # Given the Friday before the clocks go forward (Sunday 29 March 2026)
        self.clock.now = berlin(2026, 3, 27, 18, 0)
        decision = self.acquire(Pacing(window=OFFICE_HOURS))
        # Then Monday 09:00 is CEST (UTC+2): 07:00 UTC, not 08:00
        self.assertEqual(decision.not_before, datetime(2026, 3, 30, 7, 0, tzinfo=timezone.utc))

    def test_early_on_an_allowed_day_waits_for_that_day_s_opening(self) -> None:
        self.clock.now = berlin(2026, 3, 3, 7, 30)
        decision = self.acquire(Pacing(window=OFFICE_HOURS))
        self.assertEqual(decision.not_before, datetime(2026, 3, 3, 8, 0, tzinfo=timezone.utc))

    def test_inside_the_window_a_send_is_allowed_at_once(self) -> None:
        decision = self.acquire(Pacing(window=OFFICE_HOURS))
        self.assertEqual((decision.allowed, decision.reason, decision.not_before, decision.wait),
                         (True, None, None, 0.0))

    def test_prune_drops_old_buckets_and_keeps_today_s_counts(self) -> None:
        policy = Pacing(daily_cap=2, per_domain_per_hour=5)
        self.allowed(policy, 2)
        self.clock.advance(days=10)
        self.assertTrue(self.acquire(policy).allowed)  # today's buckets
        dropped = self.pacer.prune(older_than=timedelta(days=7))
        self.assertEqual(dropped, 1 + 2)  # the old day, two old domain hours
        self.assertTrue(self.acquire(policy).allowed)  # today's count kept: the second of two ...
        self.assertFalse(self.acquire(policy).allowed)  # ... and the third refused
        self.assertEqual(self.pacer.prune(older_than=timedelta(days=7)), 0)

    # -- daily cap and warm-up -------------------------------------------------------------------
    def test_a_daily_cap_refuses_the_next_send_until_the_next_window_opens(self) -> None:
        policy = Pacing(daily_cap=3, window=OFFICE_HOURS)
        # When four are asked for on one Tuesday
        results = self.allowed(policy, 3)
        fourth = self.acquire(policy)
        # Then three go, and the fourth waits for Wednesday 09:00 Berlin
        self.assertEqual(results, [True, True, True])
        self.assertEqual((fourth.allowed, fourth.reason), (False, "daily_cap"))
        self.assertEqual(fourth.not_before, datetime(2026, 3, 4, 8, 0, tzinfo=timezone.utc))
        # And on Wednesday the mailbox sends again
        self.clock.advance(days=1)
        self.assertTrue(self.acquire(policy).allowed)

    def test_without_a_window_a_used_up_cap_waits_for_local_midnight(self) -> None:
        policy = Pacing(daily_cap=1)
        self.acquire(policy)
        self.assertEqual(self.acquire(policy).not_before, datetime(2026, 3, 3, 23, 0, tzinfo=timezone.utc))

    def test_a_message_refused_by_the_domain_rate_does_not_use_up_the_daily_cap(self) -> None:
        policy = Pacing(daily_cap=2, per_domain_per_hour=1)
        # Given one send to x.example, and a second to it refused by its hourly rate
        first = self.acquire(policy, to="a@x.example")
        refused = self.acquire(policy, to="b@x.example")
        # Then another domain still gets the second of the day's two sends, and only that one
        second = self.acquire(policy, to="c@y.example")
        third = self.acquire(policy, to="d@z.example")
        self.assertEqual([first.allowed, refused.reason, second.allowed, third.reason],
                         [True, "domain_rate", True, "daily_cap"])

    def test_the_daily_cap_is_shared_by_every_campaign_of_the_mailbox(self) -> None:
        self.acquire(Pacing(), campaign_id="uncapped")
        self.acquire(Pacing(daily_cap=2), campaign_id="capped")
        self.assertEqual(self.acquire(Pacing(daily_cap=2), campaign_id="capped").reason, "daily_cap")

    def test_warm_up_ramps_the_cap_from_its_first_day(self) -> None:
        policy = Pacing(warmup=WarmUp(start=2, increase=1, since=date(2026, 3, 3)))
        day_zero = self.allowed(policy, 3)
        self.clock.advance(days=3)
        day_three = self.allowed(policy, 6)
        self.assertEqual(day_zero, [True, True, False])
        self.assertEqual(day_three, [True] * 5 + [False])
        self.assertEqual(self.acquire(policy).reason, "warmup_cap")

    def test_warm_up_without_a_start_date_counts_from_the_first_recorded_send(self) -> None:
        self.pacer.record("sent", mailbox=MAILBOX, to="x@y.example")
        self.clock.advance(days=3)
        policy = Pacing(warmup=WarmUp(start=2, increase=1))
        self.assertEqual(self.allowed(policy, 6), [True] * 5 + [False])

    def test_a_daily_cap_below_the_warm_up_ramp_is_the_binding_one(self) -> None:
        policy = Pacing(daily_cap=1, warmup=WarmUp(start=5, since=date(2026, 3, 3)))
        self.acquire(policy)
        self.assertEqual(self.acquire(policy).reason, "daily_cap")

    # -- per-domain rate -------------------------------------------------------------------------
    def test_a_domain_rate_refuses_a_third_send_in_the_hour_but_not_another_domain(self) -> None:
        self.clock.now = datetime(2026, 3, 3, 10, 20, tzinfo=timezone.utc)
        policy = Pacing(per_domain_per_hour=2)
        sent = [self.acquire(policy, to=to).allowed for to in ("a@example.com", "b@example.com")]
        third = self.acquire(policy, to="c@mail.example.com")  # the same registrable domain
        other = self.acquire(policy, to="a@other.example")
        self.assertEqual(sent, [True, True])
        self.assertEqual((third.allowed, third.reason), (False, "domain_rate"))
        self.assertEqual(third.not_before, datetime(2026, 3, 3, 11, 0, tzinfo=timezone.utc))
        self.assertTrue(other.allowed)

    # -- jitter ----------------------------------------------------------------------------------
    def test_jitter_makes_the_second_of_two_simultaneous_sends_wait_one_gap(self) -> None:
        policy = Pacing(jitter_seconds=(30, 90))
        first = self.acquire(policy)
        second = self.acquire(policy, to="carol@buyer.example")
        self.assertEqual(first.wait, 0.0)
        self.assertTrue(30 <= second.wait <= 90)
        self.assertAlmostEqual(second.wait, random.Random(7).uniform(30, 90), places=3)

    # -- concurrency -----------------------------------------------------------------------------
    def test_threads_sending_from_one_mailbox_never_exceed_its_cap(self) -> None:
        policy = Pacing(daily_cap=50)
        results: list[bool] = []
        lock = threading.Lock()

        def sender(n: int) -> None:
            pacer = Pacer(self.db, clock=self.clock)
            for i in range(20):
                allowed = pacer.acquire(policy, mailbox=MAILBOX, to=f"t{n}.{i}@buyer.example").allowed
                with lock:
                    results.append(allowed)

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with self.db.session() as s:
            stored = s.execute(select(PacingSlotRow.count).where(PacingSlotRow.scope == f"mailbox:{MAILBOX}")).scalar()
        self.assertEqual((len(results), results.count(True), stored), (160, 50, 50))

    # -- auto-pause ------------------------------------------------------------------------------
    def record(self, kind: str, times: int, guard: AutoPause) -> None:
        for _ in range(times):
            self.pacer.record(kind, mailbox=MAILBOX, to="x@buyer.example", guard=guard)

    def test_bounces_pause_the_mailbox_only_once_the_sample_is_large_enough(self) -> None:
        guard = AutoPause(min_sample=50)
        # Given 49 sends and 10 bounces: too few sends for the rate to count
        self.record("sent", 49, guard)
        self.record("bounce", 10, guard)
        self.assertIsNone(self.pacer.paused(f"mailbox:{MAILBOX}"))
        # When the 50th send bounces too
        self.record("sent", 1, guard)
        self.record("bounce", 1, guard)
        # Then the mailbox is paused with its evidence, and sends are refused
        pause = self.pacer.paused(f"mailbox:{MAILBOX}")
        self.assertEqual((pause["reason"], pause["evidence"]), ("bounce_rate", "11 bounces / 50 sent in 7 days"))
        refused = self.acquire(Pacing())
        self.assertEqual((refused.allowed, refused.reason, refused.not_before), (False, "paused:bounce_rate", None))
        # And once resumed it sends again
        self.assertTrue(self.pacer.resume(f"mailbox:{MAILBOX}"))
        self.assertTrue(self.acquire(Pacing()).allowed)

    def test_complaints_pause_the_mailbox_when_their_rate_reaches_the_threshold(self) -> None:
        guard = AutoPause(complaint_rate=0.01, min_sample=50)
        self.record("sent", 200, guard)
        self.record("complaint", 1, guard)  # 0.5 %
        before = self.pacer.paused(f"mailbox:{MAILBOX}")
        self.record("complaint", 1, guard)  # 1 %
        self.assertIsNone(before)
        self.assertEqual(self.pacer.paused(f"mailbox:{MAILBOX}")["reason"], "complaint_rate")
        self.assertEqual(self.acquire(Pacing()).reason, "paused:complaint_rate")

    def test_events_older_than_the_window_do_not_count(self) -> None:
        guard = AutoPause(min_sample=50, window_days=7)
        self.record("sent", 50, guard)
        self.clock.advance(days=8)
        self.record("bounce", 10, guard)
        self.assertIsNone(self.pacer.check_health(MAILBOX, guard))
        self.assertEqual(self.pacer.pauses(), [])

    def test_a_record_without_a_guard_never_pauses(self) -> None:
        self.record("sent", 50, AutoPause())
        self.record("bounce", 50, None)
        self.assertIsNone(self.pacer.paused(f"mailbox:{MAILBOX}"))

    def test_pausing_twice_is_a_no_op_and_mailbox_scopes_ignore_case(self) -> None:
        first = self.pacer.pause("mailbox:Sales@ACME.example", reason="manual", evidence="by hand")
        again = self.pacer.pause(f"mailbox:{MAILBOX}", reason="other")
        self.assertEqual((first, again), (True, False))
        self.assertEqual([(p["scope"], p["reason"]) for p in self.pacer.pauses()], [(f"mailbox:{MAILBOX}", "manual")])
        self.assertEqual(self.pacer.acquire(Pacing(), mailbox="SALES@acme.example", to="a@b.example").reason,
                         "paused:manual")

    def test_a_paused_campaign_stops_only_its_own_sends(self) -> None:
        self.pacer.pause("campaign:spring", reason="manual")
        self.assertEqual(self.acquire(Pacing(), campaign_id="spring").reason, "paused:manual")
        self.assertTrue(self.acquire(Pacing(), campaign_id="autumn").allowed)

    def test_an_unknown_event_kind_is_refused(self) -> None:
        with self.assertRaises(ValueError):
            self.pacer.record("opened", mailbox=MAILBOX)


class SqlitePacerTest(PacerContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return TempHome()


@requires_real_services()
class PostgresPacerTest(PacerContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return postgres_home(self)


class PacingPolicyTest(unittest.TestCase):
    def assertFieldError(self, loc: tuple, **payload: object) -> None:
        with self.assertRaises(ValidationError) as caught:
            Pacing.model_validate(payload)
        self.assertIn(loc, [error["loc"] for error in caught.exception.errors()])

    def test_a_window_that_ends_before_it_starts_names_its_end(self) -> None:
        self.assertFieldError(("window", "end"), window={"start": "17:00", "end": "09:00"})

    def test_a_weekday_outside_one_to_seven_names_the_day(self) -> None:
        self.assertFieldError(("window", "days", 0), window={"days": [8]})

    def test_a_repeated_weekday_names_the_days(self) -> None:
        self.assertFieldError(("window", "days"), window={"days": [1, 1]})

    def test_a_jitter_minimum_above_its_maximum_names_the_jitter(self) -> None:
        self.assertFieldError(("jitter_seconds",), jitter_seconds=[10, 5])

    def test_an_unknown_key_is_refused(self) -> None:
        self.assertFieldError(("daily_cpa",), daily_cpa=3)

    def test_a_policy_survives_its_json_form(self) -> None:
        policy = Pacing(daily_cap=40, window={"days": [1, 3], "start": "08:30", "end": "16:00"},
                        jitter_seconds=(20, 60), warmup={"since": "2026-03-02"})
        again = Pacing.model_validate(policy.model_dump(mode="json"))
        self.assertEqual(again, policy)
        self.assertEqual((again.window.start, again.auto_pause), (time(8, 30), AutoPause()))


if __name__ == "__main__":
    unittest.main()
