"""BaseOrchestrator: validate the payload, run a flow on the engine, return an envelope.

Orchestrators are thin.  They never touch a database, a model or the network
themselves: a subclass declares its payload model and builds a flow
(``build_flow``) whose agent nodes the engine calls through the Registry and
the Dispatcher, so validation, provenance, retries and limits apply to every
call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from agent.clock import clock_from
from agent.context import RunContext
from agent.dispatch.local import Dispatcher
from agent.engine.checkpoints.base import CheckpointStore
from agent.engine.flow import FlowGraph
from agent.engine.runner import Engine
from agent.engine.state import RunResult
from agent.envelope import make_envelope, new_run_id, validate_envelope
from agent.errors import AgentCallError, AgentError, ConfigurationError, InvalidInput, PayloadError
from agent.logs import get_logger
from agent.registry import Registry
from agent.settings import Settings, get_settings
from agent.validation import first_error

__all__ = ["BaseOrchestrator", "is_envelope"]

log = get_logger("agent.orchestrator")


def is_envelope(payload: Any) -> bool:
    return isinstance(payload, Mapping) and "metadata" in payload and "records" in payload


class BaseOrchestrator:
    """Base of the domain orchestrators.

    Subclasses declare ``name`` and ``payload_model`` and implement
    ``build_flow()`` (or override ``execute(payload, context)``).  Hooks ``before_run`` / ``after_run`` /
    ``on_error`` take keyword arguments plus ``**kwargs``; a failing hook is
    logged, never propagated.
    """

    kind: ClassVar[str] = "orchestrator"
    name: ClassVar[str] = "base"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str | None] = None
    capabilities: ClassVar[frozenset[str]] = frozenset()
    payload_model: ClassVar[type[BaseModel] | None] = None
    # An incoming envelope that already carries records is returned, not re-queried.
    passthrough_envelopes: ClassVar[bool] = True

    def __init__(self, registry: Registry | None = None, *, settings: Settings | None = None,
                 tenant: str | None = None, engine: Engine | None = None,
                 dispatcher: Dispatcher | None = None, checkpoints: CheckpointStore | None = None) -> None:
        if registry is None:
            from agent.builtins import default_registry

            registry = default_registry()
        self.registry = registry
        self.clock = clock_from(registry)
        self.settings = settings or get_settings()
        self.tenant = tenant or self.settings.tenant
        if engine is not None and (dispatcher is not None or checkpoints is not None):
            raise ConfigurationError("pass either engine= or dispatcher=/checkpoints=, not both")
        self.engine = engine or Engine(registry, dispatcher=dispatcher, checkpoints=checkpoints,
                                       settings=self.settings)
        self._flows: dict[Any, FlowGraph] = {}

    # -- public -----------------------------------------------------------------
    def run(self, payload: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> dict[str, Any]:
        """Run once and return a validated envelope; errors are ``AgentError``s.

        The flow's answer is its last node's envelope, which the engine checked
        when the node returned it (a passthrough is built from a checked one);
        an ``execute`` of a subclass's own is checked here."""
        context = self._start(payload, run_id)
        try:
            envelope = self._passthrough_or_none(payload, context)
            if envelope is None:
                envelope = self.execute(self.validate_payload(payload), context)
                if type(self).execute is not BaseOrchestrator.execute:
                    validate_envelope(envelope)  # else the engine checked it when its node returned it
        except AgentError as exc:
            self._failed(context, exc)
            raise
        except Exception as exc:  # a bug or a library error below: translate, keep the cause
            raise self._crashed(context, exc) from exc
        return self._succeeded(context, envelope)

    async def arun(self, payload: Mapping[str, Any] | None = None, *, run_id: str | None = None) -> dict[str, Any]:
        """``run`` under asyncio: the flow runs on ``Engine.arun``."""
        context = self._start(payload, run_id)
        try:
            envelope = self._passthrough_or_none(payload, context)
            if envelope is None:
                envelope = await self.aexecute(self.validate_payload(payload), context)
                if type(self).aexecute is not BaseOrchestrator.aexecute:
                    validate_envelope(envelope)
        except AgentError as exc:
            self._failed(context, exc)
            raise
        except Exception as exc:
            raise self._crashed(context, exc) from exc
        return self._succeeded(context, envelope)

    def execute(self, payload: Any, context: RunContext) -> dict[str, Any]:
        """Run this orchestrator's flow for ``payload`` on the engine; its last envelope is the answer."""
        return self._answer(self.engine.run(self.flow_for(payload), payload, context=context))

    async def aexecute(self, payload: Any, context: RunContext) -> dict[str, Any]:
        return self._answer(await self.engine.arun(self.flow_for(payload), payload, context=context))

    def build_flow(self, variant: Any = None) -> FlowGraph:
        """The flow this orchestrator runs (``variant``: see ``flow_variant``)."""
        raise NotImplementedError

    def flow_variant(self, payload: Any) -> Any:
        """A key for flows that differ by payload (e.g. the delivery channel); None if one flow fits all."""
        return None

    def flow_for(self, payload: Any) -> FlowGraph:
        variant = self.flow_variant(payload)
        flow = self._flows.get(variant)
        if flow is None:
            flow = self._flows.setdefault(variant, self.build_flow(variant))
        return flow

    def validate_payload(self, payload: Any) -> Any:
        """``payload`` checked against ``payload_model``; ``PayloadError`` names the field."""
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            raise PayloadError("payload", f"must be an object, not {type(payload).__name__}")
        if self.payload_model is None:
            return dict(payload)
        try:
            return self.payload_model.model_validate(dict(payload))
        except ValidationError as exc:
            raise PayloadError(*first_error(exc, "")) from None

    def call(self, agent: str, request: Mapping[str, Any], context: RunContext, *, node: str) -> dict[str, Any]:
        """Call one operational agent outside a flow: through the registry and the Dispatcher."""
        instance = self.registry.resolve(agent)
        child = context.child(node=node)
        with self.engine.dispatcher.slot(agent, key={"tenant": context.tenant}):
            try:
                envelope = instance.run(request, context=child)
            except AgentError:
                raise
            except Exception as exc:
                raise AgentCallError(agent, f"{exc.__class__.__name__}: {exc}") from exc
        try:
            return validate_envelope(envelope)
        except InvalidInput as exc:
            raise AgentCallError(agent, f"returned a malformed envelope: {exc}") from exc

    # -- hooks (no-ops by default) ------------------------------------------------
    def before_run(self, *, context: RunContext, payload: Any, **kwargs: Any) -> None:
        """Called before the payload is validated."""

    def after_run(self, *, context: RunContext, envelope: dict[str, Any], **kwargs: Any) -> None:
        """Called with the validated envelope."""

    def on_error(self, *, context: RunContext, error: AgentError, **kwargs: Any) -> None:
        """Called with the error about to be raised."""

    # -- helpers -------------------------------------------------------------------
    def _start(self, payload: Any, run_id: str | None) -> RunContext:
        if run_id is None and is_envelope(payload) and isinstance(payload["metadata"], Mapping) \
                and self.engine.checkpoints is None:
            # An envelope from upstream carries its run on: lineage stays within one run.  With
            # checkpoints a run_id names this flow's steps, so this run gets its own (lineage
            # still runs through the records' parents).
            run_id = payload["metadata"].get("run_id")
        context = RunContext(run_id=run_id or new_run_id(), flow=self.name, tenant=self.tenant,
                             settings=self.settings, clock=self.clock)
        self._hook("before_run", context=context, payload=payload)
        return context

    def _passthrough_or_none(self, payload: Any, context: RunContext) -> dict[str, Any] | None:
        if self.passthrough_envelopes and is_envelope(payload) and payload["records"]:
            return self._passthrough(payload, context)
        return None

    def _answer(self, result: RunResult) -> dict[str, Any]:
        if result.envelope is None or result.status != "succeeded":
            raise AgentCallError(self.name, f"flow stopped {result.status} at {result.waiting_for!r}")
        return result.envelope

    def _failed(self, context: RunContext, error: AgentError) -> None:
        log.warning("run %s flow=%s failed: %s", context.run_id, self.name, error)
        self._hook("on_error", context=context, error=error)

    def _crashed(self, context: RunContext, exc: Exception) -> AgentCallError:
        error = AgentCallError(self.name, f"{exc.__class__.__name__}: {exc}")
        log.error("run %s flow=%s crashed: %s", context.run_id, self.name, error, exc_info=exc)
        self._hook("on_error", context=context, error=error)
        return error

    def _succeeded(self, context: RunContext, envelope: dict[str, Any]) -> dict[str, Any]:
        meta = envelope["metadata"]
        log.info("run %s flow=%s records=%d total=%d duration_ms=%.1f", context.run_id, self.name,
                 len(envelope["records"]), meta["total_count"], context.elapsed_ms())
        self._hook("after_run", context=context, envelope=envelope)
        return envelope

    def _passthrough(self, envelope: Mapping[str, Any], context: RunContext) -> dict[str, Any]:
        validate_envelope(envelope)
        meta = envelope["metadata"]
        return make_envelope(envelope["records"], source=meta["source"], run_id=context.run_id,
                             flow=self.name, node="passthrough", total_count=meta["total_count"],
                             partial=meta["partial"], errors=meta["errors"], passthrough=True,
                             upstream_run_id=meta["run_id"])

    def _hook(self, name: str, **kwargs: Any) -> None:
        try:
            getattr(self, name)(**kwargs)
        except Exception:
            log.exception("hook %s of %s failed", name, self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"
