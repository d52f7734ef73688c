"""The in-process Dispatcher: limit options, concurrency, token buckets, circuit breaker, engine use."""

from __future__ import annotations

import threading
import unittest
from typing import Any

from agent.dispatch import Dispatcher, RateLimit, parse_limits
from agent.engine import Engine, Flow
from agent.errors import CircuitOpen, InvalidInput, LimitTimeout
from agent.registry import Registry

AGENT = "crm"


class FakeClock:
    """``now`` for the dispatcher's clock, ``advance`` for its sleep (recorded); ``tick`` is time passing."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def tick(self, seconds: float) -> None:
        self.t += seconds


class Events:
    """A dispatcher observer that tests can wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event: str, *, agent: str, **info: Any) -> None:
        with self.cond:
            self.seen.append((event, agent, info))
            self.cond.notify_all()

    def count(self, event: str) -> int:
        with self.cond:
            return sum(1 for e, _, _ in self.seen if e == event)

    def wait_for(self, event: str, count: int = 1) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: sum(1 for e, _, _ in self.seen if e == event) >= count, 10)


class Holder:
    """A thread that takes a slot of ``agent`` and holds it until ``finish()``."""

    def __init__(self, dispatcher: Any, agent: str = AGENT, **slot: Any) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._hold, args=(dispatcher, agent, slot), daemon=True)

    def _hold(self, dispatcher: Any, agent: str, slot: dict[str, Any]) -> None:
        try:
            with dispatcher.slot(agent, **slot):
                self.entered.set()
                self.release.wait(10)
        except BaseException as exc:
            self.error = exc

    def start(self) -> Holder:
        self.thread.start()
        return self

    def finish(self) -> None:
        self.release.set()
        self.thread.join(10)


def release_all(*holders: Holder) -> None:
    """Release every holder, then join them (a waiting holder ends only once the others let go)."""
    for holder in holders:
        holder.release.set()
    for holder in holders:
        holder.thread.join(10)


class Boom(RuntimeError):
    pass


class LimitOptionTests(unittest.TestCase):
    def assertRefused(self, value: Any, field: str) -> None:
        with self.assertRaises(InvalidInput) as caught:
            parse_limits(AGENT, value)
        self.assertEqual(caught.exception.field, field)

    def test_an_unknown_option_is_refused_naming_it(self) -> None:
        self.assertRefused({"concurency": 2}, "limits.crm.concurency")

    def test_a_bad_value_is_refused_naming_its_field(self) -> None:
        self.assertRefused({"concurrency": 0}, "limits.crm.concurrency")

    def test_a_bad_rate_is_refused_naming_its_path(self) -> None:
        self.assertRefused({"rates": [{"rate": 5, "by": ["region"]}]}, "limits.crm.rates[0].by[0]")

    def test_an_unknown_breaker_option_is_refused_naming_its_path(self) -> None:
        self.assertRefused({"breaker": {"failure": 3}}, "limits.crm.breaker.failure")

    def test_limits_that_are_not_an_object_are_refused(self) -> None:
        self.assertRefused(3, "limits.crm")

    def test_a_dispatcher_refuses_bad_limits_when_built(self) -> None:
        with self.assertRaises(InvalidInput) as caught:
            Dispatcher(limits={"mailer": {"acquire_timeout": -1}})
        self.assertEqual(caught.exception.field, "limits.mailer.acquire_timeout")

    def test_valid_limits_are_parsed(self) -> None:
        limits = parse_limits(AGENT, {"concurrency": 2, "rates": [{"rate": 5, "burst": 10, "by": ["tenant"]}]})
        self.assertEqual((limits.concurrency, limits.rates), (2, (RateLimit(rate=5, burst=10, by=("tenant",)),)))


class ConcurrencyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.events = Events()
        self.dispatcher = Dispatcher({AGENT: {"concurrency": 1}}, observer=self.events)

    def two_callers(self) -> tuple[Holder, Holder]:
        first, second = Holder(self.dispatcher), Holder(self.dispatcher)
        self.addCleanup(release_all, first, second)
        first.start()
        self.assertTrue(first.entered.wait(10))
        second.start()
        self.assertTrue(self.events.wait_for("wait"))
        return first, second

    def test_a_second_caller_waits_while_the_only_slot_is_held(self) -> None:
        # When
        _, second = self.two_callers()
        # Then
        self.assertFalse(second.entered.is_set())

    def test_a_waiting_caller_proceeds_when_the_slot_is_released(self) -> None:
        # Given
        first, second = self.two_callers()
        # When
        first.finish()
        # Then
        self.assertTrue(second.entered.wait(10))
        second.finish()
        self.assertEqual((first.error, second.error), (None, None))

    def test_stats_show_the_slot_in_use_and_the_caller_waiting(self) -> None:
        # When
        self.two_callers()
        # Then
        stats = self.dispatcher.stats(AGENT)
        self.assertEqual((stats.in_use, stats.waiting, stats.breaker), (1, 1, "closed"))

    def test_a_caller_waiting_past_acquire_timeout_gets_limit_timeout(self) -> None:
        # Given
        dispatcher = Dispatcher({AGENT: {"concurrency": 1, "acquire_timeout": 0.05}})
        with dispatcher.slot(AGENT):
            # When
            with self.assertRaises(LimitTimeout):
                with dispatcher.slot(AGENT):
                    self.fail("ran without a slot")
            # Then it no longer counts as waiting
            stats = dispatcher.stats(AGENT)
        self.assertEqual((stats.in_use, stats.waiting), (1, 0))

    def test_slots_are_given_back_when_the_body_raises(self) -> None:
        # Given
        with self.assertRaises(Boom):
            with self.dispatcher.slot(AGENT):
                raise Boom("agent down")
        # When
        with self.dispatcher.slot(AGENT, timeout=0):
            in_use = self.dispatcher.stats(AGENT).in_use
        # Then
        self.assertEqual((in_use, self.dispatcher.stats(AGENT).in_use), (1, 0))


class RateLimitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.events = Events()

    def dispatcher(self, rate: float = 2, burst: int = 3, by: tuple[str, ...] = ()) -> Dispatcher:
        limits = {AGENT: {"rates": [{"rate": rate, "burst": burst, "by": by}], "breaker": None}}
        return Dispatcher(limits, clock=self.clock.now, sleep=self.clock.advance, observer=self.events)

    def calls(self, dispatcher: Dispatcher, count: int, **slot: Any) -> None:
        for _ in range(count):
            with dispatcher.slot(AGENT, **slot):
                pass

    def test_a_burst_passes_without_waiting(self) -> None:
        # When
        self.calls(self.dispatcher(rate=2, burst=3), 3)
        # Then
        self.assertEqual(self.clock.sleeps, [])

    def test_the_call_after_a_burst_waits_one_token_interval(self) -> None:
        # When
        self.calls(self.dispatcher(rate=2, burst=3), 4)
        # Then
        self.assertEqual(self.clock.sleeps, [0.5])
        self.assertIn(("rate_wait", AGENT, {"key": (), "seconds": 0.5}), self.events.seen)

    def test_tokens_refill_with_time(self) -> None:
        # Given a bucket emptied by a burst
        dispatcher = self.dispatcher(rate=2, burst=3)
        self.calls(dispatcher, 3)
        # When a second passes (two tokens) and three more calls come
        self.clock.tick(1.0)
        self.calls(dispatcher, 3)
        # Then only the third waits
        self.assertEqual(self.clock.sleeps, [0.5])

    def test_saved_tokens_never_exceed_the_burst(self) -> None:
        # Given
        dispatcher = self.dispatcher(rate=2, burst=3)
        self.clock.tick(100.0)
        # When
        self.calls(dispatcher, 4)
        # Then
        self.assertEqual(self.clock.sleeps, [0.5])

    def test_different_campaigns_do_not_share_tokens(self) -> None:
        # Given
        dispatcher = self.dispatcher(rate=1, burst=1, by=("tenant", "campaign"))
        # When
        self.calls(dispatcher, 1, key={"tenant": "acme", "campaign": "spring"})
        self.calls(dispatcher, 1, key={"tenant": "acme", "campaign": "summer"})
        self.calls(dispatcher, 1, key={"tenant": "globex", "campaign": "spring"})
        # Then
        self.assertEqual(self.clock.sleeps, [])

    def test_calls_of_the_same_campaign_share_tokens(self) -> None:
        # Given
        dispatcher = self.dispatcher(rate=1, burst=1, by=("tenant", "campaign"))
        # When
        self.calls(dispatcher, 2, key={"tenant": "acme", "campaign": "spring"})
        # Then
        self.assertEqual(self.clock.sleeps, [1.0])

    def test_a_wait_longer_than_the_deadline_raises_limit_timeout_without_sleeping(self) -> None:
        # Given
        dispatcher = self.dispatcher(rate=1, burst=1)
        self.calls(dispatcher, 1)
        # When
        with self.assertRaises(LimitTimeout):
            self.calls(dispatcher, 1, timeout=0.5)
        # Then
        self.assertEqual(self.clock.sleeps, [])
        self.assertEqual(self.events.count("rejected"), 1)


class CircuitBreakerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.dispatcher = Dispatcher({AGENT: {"breaker": {"failures": 2, "reset_after": 30}}},
                                     clock=self.clock.now, sleep=self.clock.advance)
        self.ran: list[str] = []

    def fail(self, error: Exception | None = None) -> None:
        with self.assertRaises(type(error or Boom("x"))):
            with self.dispatcher.slot(AGENT):
                raise error or Boom("agent down")

    def succeed(self, label: str = "call") -> None:
        with self.dispatcher.slot(AGENT):
            self.ran.append(label)

    def open_circuit(self) -> None:
        self.fail()
        self.fail()

    def test_calls_fail_fast_after_consecutive_failures(self) -> None:
        # Given
        self.open_circuit()
        # When
        with self.assertRaises(CircuitOpen):
            self.succeed()
        # Then the body never ran
        self.assertEqual((self.ran, self.dispatcher.stats(AGENT).breaker), ([], "open"))

    def test_a_success_in_between_resets_the_failure_count(self) -> None:
        # Given
        self.fail()
        self.succeed("between")
        self.fail()
        # When
        self.succeed("after")
        # Then
        self.assertEqual(self.ran, ["between", "after"])

    def test_after_reset_after_one_probe_is_admitted(self) -> None:
        # Given
        self.open_circuit()
        self.clock.tick(30)
        # When
        self.succeed("probe")
        # Then
        self.assertEqual(self.ran, ["probe"])

    def test_a_second_call_during_the_probe_still_gets_circuit_open(self) -> None:
        # Given
        self.open_circuit()
        self.clock.tick(30)
        # When a call comes while the probe is in flight
        with self.dispatcher.slot(AGENT):
            with self.assertRaises(CircuitOpen):
                self.succeed("second")
        # Then
        self.assertEqual(self.ran, [])

    def test_a_successful_probe_closes_the_circuit(self) -> None:
        # Given
        self.open_circuit()
        self.clock.tick(30)
        # When
        self.succeed("probe")
        # Then
        self.succeed("next")
        self.succeed("and next")
        self.assertEqual((self.ran, self.dispatcher.stats(AGENT).breaker), (["probe", "next", "and next"], "closed"))

    def test_a_failed_probe_opens_the_circuit_again(self) -> None:
        # Given
        self.open_circuit()
        self.clock.tick(30)
        # When
        self.fail()
        # Then
        with self.assertRaises(CircuitOpen):
            self.succeed()
        self.assertEqual((self.ran, self.dispatcher.stats(AGENT).breaker), ([], "open"))

    def test_a_failed_probe_opens_the_circuit_for_another_reset_after(self) -> None:
        # Given
        self.open_circuit()
        self.clock.tick(30)
        self.fail()
        # When
        self.clock.tick(30)
        # Then
        self.succeed("second probe")
        self.assertEqual(self.ran, ["second probe"])

    def test_invalid_input_in_the_body_does_not_count_as_a_failure(self) -> None:
        # Given
        self.fail()
        # When
        self.fail(InvalidInput("request.email", "is not an email address"))
        self.fail(InvalidInput("request.email", "is not an email address"))
        # Then
        self.succeed()
        self.assertEqual(self.ran, ["call"])


class Enricher:
    """An agent that counts its calls in flight; the first holds on until the others wait."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def run(self, request: dict[str, Any], *, context: Any) -> list[dict[str, Any]]:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            self.events.wait_for("wait", count=2)
        finally:
            with self.lock:
                self.in_flight -= 1
        return [{"branch": request["branch"]}]


class EngineDispatchTests(unittest.TestCase):
    def fan_out(self, registry: Registry, dispatcher: Dispatcher) -> Any:
        engine = Engine(registry, dispatcher=dispatcher)
        self.addCleanup(engine.close)
        flow = Flow("enrich").node("start", lambda state: [{"q": "cto"}]).merge("merged")
        for branch in ("a", "b", "c"):
            flow.node(branch, agent="enricher", request=lambda state, b=branch: {"branch": b})
        return engine.run(flow.fan_out("start", ["a", "b", "c"], join="merged").build())

    def test_limits_declared_at_registration_hold_across_a_fan_out(self) -> None:
        # Given
        events = Events()
        agent, registry = Enricher(events), Registry()
        registry.register("enricher", agent, limits={"concurrency": 1})
        # When
        result = self.fan_out(registry, Dispatcher(observer=events))
        # Then
        self.assertEqual((agent.peak, events.count("wait")), (1, 2))
        self.assertEqual(sorted(r["branch"] for r in result.envelope["records"]), ["a", "b", "c"])

    def test_dispatcher_limits_hold_across_a_fan_out(self) -> None:
        # Given
        events = Events()
        agent, registry = Enricher(events), Registry()
        registry.register("enricher", agent)
        # When
        self.fan_out(registry, Dispatcher({"enricher": {"concurrency": 1}}, observer=events))
        # Then
        self.assertEqual((agent.peak, events.count("wait")), (1, 2))
