"""The Flow builder: what it builds, and the malformed flows it refuses with a FlowError naming the node."""

from __future__ import annotations

import unittest
from typing import Any

from pydantic import BaseModel

from agent.engine import END, Flow, Retry, compute_backoff
from agent.engine.flow import FanOut, Route, Then
from agent.errors import AgentCallError, FlowError, InvalidInput, NodeTimeout


def step(state: Any) -> list[dict[str, Any]]:
    return []


def router(state: Any) -> str:
    return "done"


class Decision(BaseModel):
    approved: bool


class FlowBuildTest(unittest.TestCase):
    def test_then_chains_the_nodes_in_sequence(self) -> None:
        # Given
        flow = Flow("seq").node("a", step).node("b", step).node("c", step)
        # When
        graph = flow.then("a", "b", "c").build()
        # Then
        self.assertEqual(dict(graph.transitions), {"a": Then("b"), "b": Then("c")})

    def test_the_first_node_defined_is_the_start_by_default(self) -> None:
        # Given / When
        graph = Flow("seq").node("a", step).node("b", step).then("a", "b").build()
        # Then
        self.assertEqual(graph.start, "a")

    def test_start_picks_the_start_node(self) -> None:
        # Given / When
        graph = Flow("seq").node("b", step).node("a", step).then("a", "b").start("a").build()
        # Then
        self.assertEqual(graph.start, "a")

    def test_route_keeps_the_router_and_its_labels(self) -> None:
        # Given
        flow = Flow("routed").node("a", step).node("b", step)
        # When
        graph = flow.route("a", router, {"more": "b", "done": END}).build()
        # Then
        self.assertEqual(graph.transitions["a"], Route(router, {"more": "b", "done": END}))

    def test_fan_out_runs_the_branches_then_the_join(self) -> None:
        # Given
        flow = (Flow("fan").node("src", step).node("x", step).node("y", step)
                .merge("joined", key="id", allow_partial=True))
        # When
        graph = flow.fan_out("src", ["x", "y"], join="joined").build()
        # Then
        self.assertEqual((graph.transitions["src"], graph.transitions["x"], graph.transitions["y"]),
                         (FanOut(("x", "y"), "joined"), Then("joined"), Then("joined")))

    def test_merge_keeps_its_key_and_partial_policy(self) -> None:
        # Given / When
        graph = (Flow("fan").node("src", step).node("x", step).merge("joined", key="id", allow_partial=True)
                 .fan_out("src", ["x"], join="joined").build())
        # Then
        node = graph.node("joined")
        self.assertEqual((node.kind, node.merge_key, node.allow_partial), ("merge", "id", True))

    def test_approval_node_carries_its_model(self) -> None:
        # Given / When
        graph = Flow("gate").node("a", step).approval("ok", Decision).then("a", "ok").build()
        # Then
        node = graph.node("ok")
        self.assertEqual((node.kind, node.approval_model), ("approval", Decision))

    def test_the_built_graph_lists_the_agents_it_calls(self) -> None:
        # Given / When
        graph = Flow("agents").node("a", agent="search").node("b", step).then("a", "b").build()
        # Then
        self.assertEqual(graph.agents, frozenset({"search"}))

    def test_the_same_transition_given_twice_is_accepted(self) -> None:
        # Given / When
        graph = Flow("seq").node("a", step).node("b", step).then("a", "b").then("a", "b").build()
        # Then
        self.assertEqual(graph.transitions["a"], Then("b"))

    def test_a_built_graph_does_not_change_when_the_builder_does(self) -> None:
        # Given
        flow = Flow("seq").node("a", step)
        graph = flow.build()
        # When
        flow.node("b", step).then("a", "b")
        # Then
        self.assertEqual((list(graph.nodes), dict(graph.transitions)), (["a"], {}))

    def test_a_node_in_a_loop_with_max_visits_makes_the_cycle_acceptable(self) -> None:
        # Given
        flow = (Flow("loop").node("a", step, max_visits=3).node("b", step)
                .then("a", "b").route("b", router, {"again": "a", "done": END}))
        # When
        graph = flow.build()
        # Then
        self.assertEqual(graph.node("a").max_visits, 3)


class FlowRefusalTest(unittest.TestCase):
    def assertRefused(self, build: Any, field: str) -> FlowError:
        with self.assertRaises(FlowError) as caught:
            build()
        self.assertEqual(caught.exception.field, field)
        return caught.exception

    def test_a_transition_to_an_unknown_node_names_its_source(self) -> None:
        # Given
        flow = Flow("f").node("a", step).then("a", "ghost")
        # When / Then
        error = self.assertRefused(flow.build, "a")
        self.assertIn("transition to unknown node 'ghost'", str(error))

    def test_a_route_label_to_nowhere_names_the_routing_node(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step).route("a", router, {"done": "b", "odd": "nowhere"})
        # When / Then
        error = self.assertRefused(flow.build, "a")
        self.assertIn("'nowhere'", str(error))

    def test_a_cycle_without_a_bound_is_refused_naming_its_nodes(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step).then("a", "b").route("b", router, {"again": "a"})
        # When
        with self.assertRaises(FlowError) as caught:
            flow.build()
        # Then
        self.assertIn(caught.exception.field, {"a", "b"})
        self.assertIn("a -> b", str(caught.exception))

    def test_a_node_looping_to_itself_without_a_bound_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).route("a", router, {"again": "a", "done": END})
        # When / Then
        self.assertRefused(flow.build, "a")

    def test_an_unreachable_node_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step).node("orphan", step).then("a", "b")
        # When / Then
        error = self.assertRefused(flow.build, "orphan")
        self.assertIn("not reachable", str(error))

    def test_a_node_defined_twice_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step)
        # When / Then
        self.assertRefused(lambda: flow.node("a", step), "a")

    def test_a_node_with_both_a_function_and_an_agent_is_refused(self) -> None:
        # Given / When / Then
        self.assertRefused(lambda: Flow("f").node("a", step, agent="search"), "a")

    def test_a_node_with_neither_a_function_nor_an_agent_is_refused(self) -> None:
        # Given / When / Then
        self.assertRefused(lambda: Flow("f").node("a"), "a")

    def test_a_merge_node_that_joins_no_fan_out_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).merge("m").then("a", "m")
        # When / Then
        error = self.assertRefused(flow.build, "m")
        self.assertIn("fan_out", str(error))

    def test_an_invalid_flow_name_is_refused(self) -> None:
        # Given / When / Then
        self.assertRefused(lambda: Flow("has space"), "has space")

    def test_invalid_node_names_are_refused(self) -> None:
        for name in ("", "has space", "9lives", "a@2", "x" * 65):
            with self.subTest(name=name):
                # Given / When / Then
                self.assertRefused(lambda: Flow("f").node(name, step), name)

    def test_the_end_marker_is_not_a_node_name(self) -> None:
        # Given / When / Then
        self.assertRefused(lambda: Flow("f").node(END, step), END)

    def test_an_invalid_timeout_is_refused(self) -> None:
        for timeout in (0, -1, "5", 86_401, float("nan")):
            with self.subTest(timeout=timeout):
                # Given / When / Then
                self.assertRefused(lambda: Flow("f").node("a", step, timeout=timeout), "a")

    def test_an_invalid_max_visits_is_refused(self) -> None:
        for visits in (0, -2, 1.5, "2"):
            with self.subTest(max_visits=visits):
                # Given / When / Then
                self.assertRefused(lambda: Flow("f").node("a", step, max_visits=visits), "a")

    def test_an_invalid_concurrency_is_refused(self) -> None:
        for concurrency in (0, 1025, 2.0, None):
            with self.subTest(concurrency=concurrency):
                # Given / When / Then
                self.assertRefused(lambda: Flow("f").node("a", step, concurrency=concurrency), "a")

    def test_a_boolean_is_not_a_valid_timeout_max_visits_or_concurrency(self) -> None:
        # Retry refuses a bool max_attempts; the node's own numbers should do the same.
        for option in ("timeout", "max_visits", "concurrency"):
            with self.subTest(option=option):
                # Given / When / Then
                self.assertRefused(lambda: Flow("f").node("a", step, **{option: True}), "a")

    def test_a_retry_that_is_not_a_retry_value_is_refused(self) -> None:
        for retry in (3, {"max_attempts": 3}):
            with self.subTest(retry=retry):
                # Given / When / Then
                self.assertRefused(lambda: Flow("f").node("a", step, retry=retry), "a")

    def test_a_node_given_two_ways_out_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step).node("c", step).then("a", "b")
        # When / Then
        self.assertRefused(lambda: flow.route("a", router, {"done": "c"}), "a")

    def test_a_branch_that_already_has_another_way_out_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step).node("c", step).merge("m").then("b", "c")
        # When / Then
        self.assertRefused(lambda: flow.fan_out("a", ["b"], join="m"), "b")

    def test_a_join_that_is_also_a_branch_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step)
        # When / Then
        self.assertRefused(lambda: flow.fan_out("a", ["b"], join="b"), "b")

    def test_an_approval_node_cannot_join_a_fan_out(self) -> None:
        # Given
        flow = Flow("f").node("a", step).node("b", step).approval("ok", Decision).fan_out("a", ["b"], join="ok")
        # When / Then
        self.assertRefused(flow.build, "ok")

    def test_an_undefined_start_node_is_refused(self) -> None:
        # Given
        flow = Flow("f").node("a", step).start("missing")
        # When / Then
        self.assertRefused(flow.build, "missing")

    def test_request_without_an_agent_is_refused(self) -> None:
        # Given / When / Then
        self.assertRefused(lambda: Flow("f").node("a", step, request=lambda s: {}), "a")

    def test_key_without_each_is_refused(self) -> None:
        # Given / When / Then
        self.assertRefused(lambda: Flow("f").node("a", step, key="id"), "a")

    def test_a_flow_error_is_an_invalid_input(self) -> None:
        # Given / When
        with self.assertRaises(InvalidInput) as caught:
            Flow("f").node("a")
        # Then
        self.assertEqual(caught.exception.code, "invalid_flow")


class RetryValidationTest(unittest.TestCase):
    def test_invalid_retry_values_raise_invalid_input_naming_the_field(self) -> None:
        cases = {
            "retry.max_attempts": [{"max_attempts": 0}, {"max_attempts": 1001}, {"max_attempts": True},
                                   {"max_attempts": 2.0}],
            "retry.base": [{"base": -1}, {"base": float("inf")}],
            "retry.multiplier": [{"multiplier": 0.5}],
            "retry.max_delay": [{"base": 5, "max_delay": 1}],
            "retry.jitter": [{"jitter": 1.5}, {"jitter": -0.1}],
            "retry.retry_on": [{"retry_on": [ValueError]}, {"retry_on": (ValueError, "x")}],
            "retry.never": [{"never": (42,)}],
        }
        for field, kwargs_list in cases.items():
            for kwargs in kwargs_list:
                with self.subTest(**{k: repr(v) for k, v in kwargs.items()}):
                    # Given / When
                    with self.assertRaises(InvalidInput) as caught:
                        Retry(**kwargs)
                    # Then
                    self.assertEqual(caught.exception.field, field)

    def test_the_default_retry_is_valid(self) -> None:
        # Given / When
        retry = Retry()
        # Then
        self.assertEqual(retry.max_attempts, 3)


class BackoffTest(unittest.TestCase):
    def test_without_jitter_the_delay_grows_exponentially(self) -> None:
        # Given / When
        delays = [compute_backoff(n, base=1, multiplier=2, max_delay=100, jitter=0, draw=0.3) for n in (1, 2, 3, 4)]
        # Then
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0])

    def test_the_delay_is_capped_at_max_delay(self) -> None:
        # Given / When
        delay = compute_backoff(10, base=1, multiplier=2, max_delay=30, jitter=0, draw=0.0)
        # Then
        self.assertEqual(delay, 30.0)

    def test_full_jitter_with_a_zero_draw_gives_no_delay(self) -> None:
        # Given / When
        delay = compute_backoff(3, base=1, multiplier=2, max_delay=100, jitter=1, draw=0.0)
        # Then
        self.assertEqual(delay, 0.0)

    def test_full_jitter_with_a_full_draw_gives_the_whole_delay(self) -> None:
        # Given / When
        delay = compute_backoff(3, base=1, multiplier=2, max_delay=100, jitter=1, draw=1.0)
        # Then
        self.assertEqual(delay, 4.0)

    def test_half_jitter_keeps_half_the_delay_fixed(self) -> None:
        # Given / When
        delay = compute_backoff(2, base=1, multiplier=2, max_delay=100, jitter=0.5, draw=0.5)
        # Then
        self.assertEqual(delay, 1.5)

    def test_a_draw_outside_zero_to_one_is_clamped(self) -> None:
        # Given / When
        delays = [compute_backoff(1, base=2, multiplier=2, max_delay=100, jitter=1, draw=d) for d in (-3, 7)]
        # Then
        self.assertEqual(delays, [0.0, 2.0])

    def test_an_attempt_below_one_is_invalid(self) -> None:
        # Given / When
        with self.assertRaises(InvalidInput) as caught:
            compute_backoff(0, base=1, multiplier=2, max_delay=10, jitter=0, draw=0)
        # Then
        self.assertEqual(caught.exception.field, "attempt")

    def test_a_large_multiplier_still_grows_the_delay(self) -> None:
        # Given: base * multiplier ** (n - 1) = 1 * 1000 ** 2, well under max_delay
        # When
        delay = compute_backoff(3, base=1, multiplier=1000, max_delay=1e9, jitter=0, draw=0)
        # Then
        self.assertEqual(delay, 1_000_000.0)

    def test_a_zero_base_never_waits_however_many_attempts(self) -> None:
        # Given: 10.0 ** 399 overflows a float, but 0 times anything is still 0
        # When
        delay = compute_backoff(400, base=0, multiplier=10.0, max_delay=30, jitter=0, draw=0)
        # Then
        self.assertEqual(delay, 0.0)

    def test_retry_delay_uses_its_own_schedule(self) -> None:
        # Given
        retry = Retry(base=0.5, multiplier=3, max_delay=10, jitter=0)
        # When / Then
        self.assertEqual([retry.delay(n, 0.9) for n in (1, 2, 3)], [0.5, 1.5, 4.5])


class ShouldRetryTest(unittest.TestCase):
    def test_an_error_in_retry_on_is_retried_while_attempts_remain(self) -> None:
        # Given
        retry = Retry(max_attempts=3)
        # When / Then
        self.assertTrue(retry.should_retry(ConnectionError("reset"), 2))

    def test_no_retry_once_max_attempts_is_reached(self) -> None:
        # Given
        retry = Retry(max_attempts=3)
        # When / Then
        self.assertFalse(retry.should_retry(ConnectionError("reset"), 3))

    def test_an_error_outside_retry_on_is_not_retried(self) -> None:
        # Given
        retry = Retry(max_attempts=3)
        # When / Then
        self.assertFalse(retry.should_retry(ValueError("bad"), 1))

    def test_an_error_in_never_is_not_retried_even_if_in_retry_on(self) -> None:
        # Given
        retry = Retry(max_attempts=3, never=(NodeTimeout,))
        # When / Then
        self.assertFalse(retry.should_retry(NodeTimeout("a", "slow"), 1))

    def test_the_default_retry_on_covers_agent_failures_and_timeouts(self) -> None:
        # Given
        retry = Retry(max_attempts=2)
        # When
        decisions = [retry.should_retry(e, 1) for e in (AgentCallError("a", "x"), TimeoutError(), ConnectionError())]
        # Then
        self.assertEqual(decisions, [True, True, True])

    def test_a_custom_retry_on_replaces_the_default(self) -> None:
        # Given
        retry = Retry(max_attempts=2, retry_on=(ValueError,))
        # When / Then
        self.assertEqual((retry.should_retry(ValueError(), 1), retry.should_retry(ConnectionError(), 1)),
                         (True, False))


if __name__ == "__main__":
    unittest.main()
