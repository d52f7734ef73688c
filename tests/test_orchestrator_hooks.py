"""Hooks of BaseOrchestrator: what each receives, and that a failing hook never changes a run."""

from __future__ import annotations

import inspect
import shutil
import tempfile
import unittest
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from agent.context import RunContext
from agent.envelope import make_envelope
from agent.errors import AgentCallError, AgentError, PayloadError
from agent.high_level_agents.orchestrators.base import BaseOrchestrator
from agent.registry import Registry
from agent.settings import get_settings


class GreetPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    who: str


class GreetOrchestrator(BaseOrchestrator):
    """Returns one greeting record; records every hook call in ``calls``."""

    name: ClassVar[str] = "greet"
    payload_model: ClassVar[type[BaseModel]] = GreetPayload

    def __init__(self, *args: Any, failing: frozenset[str] = frozenset(), crash: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing
        self.crash = crash
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def execute(self, payload: GreetPayload, context: RunContext) -> dict[str, Any]:
        if self.crash:
            raise RuntimeError("execute exploded")
        return make_envelope([{"greeting": f"hello {payload.who}"}], source="test", run_id=context.run_id)

    def _record(self, hook: str, **kwargs: Any) -> None:
        self.calls.append((hook, kwargs))
        if hook in self.failing:
            raise RuntimeError(f"{hook} hook exploded")

    def before_run(self, *, context: RunContext, payload: Any, **kwargs: Any) -> None:
        self._record("before_run", context=context, payload=payload, **kwargs)

    def after_run(self, *, context: RunContext, envelope: dict[str, Any], **kwargs: Any) -> None:
        self._record("after_run", context=context, envelope=envelope, **kwargs)

    def on_error(self, *, context: RunContext, error: AgentError, **kwargs: Any) -> None:
        self._record("on_error", context=context, error=error, **kwargs)


class HookTestCase(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.mkdtemp(prefix="agent-hooks-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        self.settings = get_settings(home=tmp, sample_data="off", database_url=f"sqlite:///{tmp}/a.db")

    def orchestrator(self, **kwargs: Any) -> GreetOrchestrator:
        return GreetOrchestrator(registry=Registry(), settings=self.settings, **kwargs)

    def calls(self, orchestrator: GreetOrchestrator, hook: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in orchestrator.calls if name == hook]


class BeforeRunTest(HookTestCase):
    def test_before_run_receives_the_raw_payload(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        payload = {"who": "Ada"}
        # When
        orchestrator.run(payload)
        # Then
        [call] = self.calls(orchestrator, "before_run")
        self.assertIs(call["payload"], payload)

    def test_before_run_receives_the_context_of_the_run(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        envelope = orchestrator.run({"who": "Ada"}, run_id="run-42")
        # Then
        [call] = self.calls(orchestrator, "before_run")
        context = call["context"]
        self.assertEqual((context.run_id, context.flow, envelope["metadata"]["run_id"]),
                         ("run-42", "greet", "run-42"))

    def test_before_run_is_called_even_when_the_payload_is_bad(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        with self.assertRaises(PayloadError):
            orchestrator.run({"who": 7})
        # Then
        self.assertEqual(len(self.calls(orchestrator, "before_run")), 1)


class AfterRunTest(HookTestCase):
    def test_after_run_receives_the_envelope_the_run_returns(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        envelope = orchestrator.run({"who": "Ada"})
        # Then
        [call] = self.calls(orchestrator, "after_run")
        self.assertIs(call["envelope"], envelope)

    def test_after_run_receives_the_same_context_as_before_run(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        orchestrator.run({"who": "Ada"})
        # Then
        [before] = self.calls(orchestrator, "before_run")
        [after] = self.calls(orchestrator, "after_run")
        self.assertIs(after["context"], before["context"])

    def test_after_run_is_not_called_when_the_run_fails(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        with self.assertRaises(PayloadError):
            orchestrator.run({"who": 7})
        # Then
        self.assertEqual(self.calls(orchestrator, "after_run"), [])


class OnErrorTest(HookTestCase):
    def test_on_error_receives_the_payload_error_the_run_raises(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        with self.assertRaises(PayloadError) as caught:
            orchestrator.run({"who": 7})
        # Then
        [call] = self.calls(orchestrator, "on_error")
        self.assertIs(call["error"], caught.exception)
        self.assertEqual(call["error"].field, "who")

    def test_on_error_receives_the_translated_error_when_execute_crashes(self) -> None:
        # Given
        orchestrator = self.orchestrator(crash=True)
        # When
        with self.assertRaises(AgentCallError) as caught:
            orchestrator.run({"who": "Ada"})
        # Then
        [call] = self.calls(orchestrator, "on_error")
        self.assertIs(call["error"], caught.exception)

    def test_on_error_is_not_called_on_success(self) -> None:
        # Given
        orchestrator = self.orchestrator()
        # When
        orchestrator.run({"who": "Ada"})
        # Then
        self.assertEqual(self.calls(orchestrator, "on_error"), [])


class FailingHookTest(HookTestCase):
    def test_a_failing_before_run_is_logged_and_the_run_still_returns(self) -> None:
        # Given
        orchestrator = self.orchestrator(failing=frozenset({"before_run"}))
        # When
        with self.assertLogs("agent.orchestrator", level="ERROR") as captured:
            envelope = orchestrator.run({"who": "Ada"})
        # Then
        self.assertEqual(envelope["records"][0]["greeting"], "hello Ada")
        self.assertIn("hook before_run of greet failed", captured.output[0])

    def test_a_failing_after_run_is_logged_and_the_run_still_returns(self) -> None:
        # Given
        orchestrator = self.orchestrator(failing=frozenset({"after_run"}))
        # When
        with self.assertLogs("agent.orchestrator", level="ERROR") as captured:
            envelope = orchestrator.run({"who": "Ada"})
        # Then
        self.assertEqual(envelope["records"][0]["greeting"], "hello Ada")
        self.assertIn("hook after_run of greet failed", captured.output[0])

    def test_a_failing_on_error_is_logged_and_the_original_error_is_still_raised(self) -> None:
        # Given
        orchestrator = self.orchestrator(failing=frozenset({"on_error"}))
        # When
        with self.assertLogs("agent.orchestrator", level="ERROR") as captured:
            with self.assertRaises(PayloadError):
                orchestrator.run({"who": 7})
        # Then
        self.assertTrue(any("hook on_error of greet failed" in line for line in captured.output),
                        captured.output)

    def test_a_failing_hook_log_carries_the_hook_exception(self) -> None:
        # Given
        orchestrator = self.orchestrator(failing=frozenset({"after_run"}))
        # When
        with self.assertLogs("agent.orchestrator", level="ERROR") as captured:
            orchestrator.run({"who": "Ada"})
        # Then: the redacting filter turns exc_info into exc_text, which the output keeps
        self.assertIn("after_run hook exploded", captured.output[0])


class HookSignatureTest(HookTestCase):
    HOOKS = ("before_run", "after_run", "on_error")

    def test_default_hooks_take_keyword_only_arguments_plus_kwargs(self) -> None:
        # Given / When
        kinds = {hook: {p.kind for p in inspect.signature(getattr(BaseOrchestrator, hook)).parameters.values()
                        if p.name != "self"} for hook in self.HOOKS}
        # Then
        for hook in self.HOOKS:
            self.assertEqual(kinds[hook], {inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD}, hook)

    def test_default_hooks_accept_context_they_do_not_know_yet(self) -> None:
        # Given: the base class's no-op hooks
        orchestrator = BaseOrchestrator(registry=Registry(), settings=self.settings)
        context = RunContext(settings=self.settings)
        # When / Then: a keyword added in a later version breaks none of them
        self.assertIsNone(orchestrator.before_run(context=context, payload={}, attempt=2))
        self.assertIsNone(orchestrator.after_run(context=context, envelope={}, attempt=2))
        self.assertIsNone(orchestrator.on_error(context=context, error=AgentError("x"), attempt=2))


if __name__ == "__main__":
    unittest.main()
