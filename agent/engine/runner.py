"""Engine: runs a built flow, synchronously (``run``) or under asyncio (``arun``).

The engine owns what orchestrators should not: envelope validation and
provenance for every node, retries with backoff, timeouts, parallel
branches, checkpoints and approvals, and calling agents through the
registry and the Dispatcher.  ``sleep``/``asleep`` and ``rng`` are injected,
so retry schedules are tested without waiting.

A node with a ``timeout`` runs in its own thread under ``run`` (a thread
cannot be killed: a timed-out call is abandoned, its result discarded) and
is cancelled under ``arun`` when it is a coroutine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import random
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any



from agent.clock import clock_from
from agent.context import RunContext
from agent.dispatch.local import Dispatcher, default_dispatcher
from agent.engine.calls import NodeCaller
from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore
from agent.engine.flow import Flow, FlowGraph
from agent.engine.hooks import log as _engine_log
from agent.engine.state import FlowState, RunResult
from agent.engine.ops import NO_APPROVAL, Call, Parallel, Save, Sleep, Status
from agent.engine.steps import RunPlan, fingerprint, validate_approval
from agent.envelope import new_run_id
from agent.errors import CheckpointError, ConfigurationError, InvalidInput, StorageError
from agent.registry import Registry
from agent.validation import parse_model
from agent.settings import Settings, get_settings

__all__ = ["Engine"]


class Engine(NodeCaller):
    """Runs flows.  One engine can run many flows and runs at once (it is thread-safe)."""

    def __init__(self, registry: Registry | None = None, *, dispatcher: Dispatcher | None = None,
                 checkpoints: CheckpointStore | None = None, hooks: Sequence[Any] = (),
                 settings: Settings | None = None, sleep: Callable[[float], None] = time.sleep,
                 asleep: Callable[[float], Any] = asyncio.sleep, rng: Callable[[], float] = random.random,
                 max_workers: int = 8) -> None:
        self._registry = registry
        self.dispatcher = dispatcher or default_dispatcher()
        self.checkpoints = checkpoints
        self.hooks = tuple(hooks)
        self.settings = settings or get_settings()
        self.sleep = sleep
        self.asleep = asleep
        self.rng = rng
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._agents: dict[str, Any] = {}
        self._checked: dict[int, FlowGraph] = {}

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from agent.builtins import default_registry

            self._registry = default_registry()
        return self._registry

    # -- public ----------------------------------------------------------------------------
    def run(self, flow: FlowGraph | Flow, input: Any = None, *, run_id: str | None = None,
            tenant: str | None = None, approval: Any = NO_APPROVAL, context: RunContext | None = None,
            force: bool = False) -> RunResult:
        """Run ``flow`` to its end or to an approval; a failed node raises its ``AgentError``.

        With a checkpoint store, a ``run_id`` seen before resumes: completed steps
        are restored, never run again.  ``approval`` is the decision for the
        approval node the run is waiting at (validated by that node's model).  A run
        still marked ``running`` is refused unless ``force`` says its process is gone.
        """
        plan = self._plan(flow, input, run_id, tenant, approval, context, force)
        return self._finish(plan, self._drive, plan.walk())

    async def arun(self, flow: FlowGraph | Flow, input: Any = None, *, run_id: str | None = None,
                   tenant: str | None = None, approval: Any = NO_APPROVAL,
                   context: RunContext | None = None, force: bool = False) -> RunResult:
        """``run`` under asyncio: async nodes are awaited, blocking agents run in threads."""
        if self.checkpoints is not None:
            plan = await asyncio.to_thread(self._plan, flow, input, run_id, tenant, approval, context, force)
        else:
            plan = self._plan(flow, input, run_id, tenant, approval, context, force)
        try:
            return await self._adrive(plan.walk())
        except Exception:
            await asyncio.to_thread(self._mark_failed, plan)
            raise

    def resume(self, flow: FlowGraph | Flow, run_id: str, *, approval: Any = NO_APPROVAL,
               force: bool = False) -> RunResult:
        """Continue a checkpointed run (after a crash, or at its approval) from its stored input."""
        if self.checkpoints is None or self.checkpoints.get_run(run_id) is None:
            raise InvalidInput("run_id", f"no checkpointed run {run_id!r} to resume")
        return self.run(flow, None, run_id=run_id, approval=approval, force=force)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    # -- planning ----------------------------------------------------------------------------
    def _plan(self, flow: FlowGraph | Flow, input: Any, run_id: str | None, tenant: str | None,
              approval: Any, context: RunContext | None, force: bool = False) -> RunPlan:
        # A built graph is checked once; a builder is built (and checked) on every run.
        graph = self._check(flow.build(), remember=False) if isinstance(flow, Flow) else self._check(flow)
        if context is None:
            context = RunContext(run_id=run_id or new_run_id(), flow=graph.name,
                                 tenant=tenant or self.settings.tenant, settings=self.settings,
                                 clock=clock_from(self.registry))
        elif context.flow != graph.name:
            context = context.child(flow=graph.name)
        if not (isinstance(context.run_id, str) and _RUN_ID.fullmatch(context.run_id)):
            raise InvalidInput("run_id", "must be 1 to 64 letters, digits or _ . : -")
        if graph.input_model is not None and input is not None:
            input = parse_model(graph.input_model, input, "input")
        saved: dict[str, dict[str, Any]] = {}
        store = self.checkpoints
        existing = None
        if approval is not NO_APPROVAL:
            existing = store.get_run(context.run_id) if store is not None else None
            if existing is None or existing.status != "paused":
                raise InvalidInput("approval", f"run {context.run_id} is not waiting for an approval "
                                               f"({'it is ' + existing.status if existing else 'no such run'})")
        if store is not None:
            created = False
            if existing is None and input is None:
                existing = store.get_run(context.run_id)
            if existing is None:
                # A new run is one INSERT; a known run_id answers with the stored run.
                existing, created = store.begin(context.run_id, graph.name, **_fingerprint_args(input))
            if not created:
                input, approval = self._resuming(graph, existing, input, approval, force)
                saved = store.load(context.run_id)
        return RunPlan(graph, FlowState(input, context), saved, self.hooks, self.rng, store is not None,
                       approval=approval, observed=bool(self.hooks) or _engine_log.isEnabledFor(logging.DEBUG))

    def _resuming(self, graph: FlowGraph, existing: CheckpointRun, input: Any, approval: Any,
                  force: bool) -> tuple[Any, Any]:
        """Checks before a known run continues, and its claim; returns its input and approval."""
        store = self.checkpoints
        assert store is not None
        if existing.flow != graph.name:
            raise InvalidInput("run_id", f"belongs to flow {existing.flow!r}, not {graph.name!r}")
        if input is None and existing.has_input:
            input = existing.input
            if graph.input_model is not None:
                input = parse_model(graph.input_model, input, "input")
        elif fingerprint(input)[0] != existing.input_hash:
            raise InvalidInput("run_id", "was started with a different input; use a new run_id")
        if approval is not NO_APPROVAL:
            # Checked before the run changes state: a refused decision leaves it paused.
            waiting = graph.nodes.get(existing.waiting_for or "")
            if waiting is None or waiting.kind != "approval":
                raise InvalidInput("approval", f"run {existing.run_id} waits at {existing.waiting_for!r}, "
                                               "which is not an approval node of this flow")
            approval = validate_approval(waiting, approval)
            # One decision wins: of two callers resuming at once, the second is refused.
            if not store.claim(existing.run_id, status="paused", waiting_for=waiting.name):
                raise InvalidInput("approval", f"run {existing.run_id} was resumed by another caller")
        elif existing.status == "failed" and not store.claim(existing.run_id, status="failed"):
            raise InvalidInput("run_id", f"run {existing.run_id} was resumed by another caller")
        elif existing.status == "running" and not force:
            # Live elsewhere, or its process died mid-run: only the caller can know which.
            raise InvalidInput("run_id", f"run {existing.run_id} is running; if its process is gone, "
                                         "take it over with force=True")
        return input, approval

    def _check(self, graph: FlowGraph, *, remember: bool = True) -> FlowGraph:
        if id(graph) in self._checked:
            return graph
        if self.checkpoints is None and any(n.kind == "approval" for n in graph.nodes.values()):
            raise ConfigurationError(f"flow {graph.name!r} has an approval node: give the engine a "
                                     "checkpoint store, so a paused run can resume")
        for agent in sorted(graph.agents):
            self._agent(agent)  # NotFound, with close names, before anything runs
        if remember:
            with self._lock:
                self._checked[id(graph)] = graph
        return graph

    def _agent(self, name: str) -> Any:
        instance = self._agents.get(name)
        if instance is None:
            instance = self.registry.resolve(name)
            if self.dispatcher.limits_for(name) is None:
                declared = self.registry.describe(name).get("limits")
                if declared:
                    self.dispatcher.configure(name, declared)
            with self._lock:
                instance = self._agents.setdefault(name, instance)
        return instance

    def _finish(self, plan: RunPlan, drive: Callable[[Generator[Any, Any, Any]], Any],
                gen: Generator[Any, Any, RunResult]) -> RunResult:
        try:
            return drive(gen)
        except Exception:
            self._mark_failed(plan)
            raise

    def _mark_failed(self, plan: RunPlan) -> None:
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.set_status(plan.run_id, "failed")
        except Exception:
            # The node's error is the one to raise; this one is only logged.
            _engine_log.exception("run %s: could not record its failure", plan.run_id)

    # -- sync driver -------------------------------------------------------------------------
    def _drive(self, gen: Generator[Any, Any, Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                kind = type(op)
                if kind is Call:
                    value = self._call(op)
                elif kind is Save:
                    _save(self.checkpoints, op)
                elif kind is Sleep:
                    self.sleep(op.seconds)
                elif kind is Parallel:
                    value = self._parallel(op.gens)
                elif kind is Status:
                    if self.checkpoints is not None:
                        self.checkpoints.set_status(op.run_id, op.status, waiting_for=op.waiting_for)
            except Exception as exc:
                error = exc

    def _outcome(self, gen: Generator[Any, Any, Any]) -> tuple[bool, Any]:
        try:
            return True, self._drive(gen)
        except Exception as exc:
            return False, exc

    def _parallel(self, gens: list[Generator[Any, Any, Any]]) -> list[tuple[bool, Any]]:
        pool = self._executor()
        futures = [pool.submit(self._outcome, g) for g in gens[1:]]
        results = [self._outcome(gens[0])]
        # A branch nobody has picked up yet runs here, so nested fan-outs never starve the pool.
        results.extend(self._outcome(g) if f.cancel() else f.result() for g, f in zip(gens[1:], futures))
        return results

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="agent-engine")
        return self._pool

    # -- asyncio driver ----------------------------------------------------------------------
    async def _adrive(self, gen: Generator[Any, Any, Any]) -> Any:
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                op = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                return stop.value
            value = error = None
            try:
                kind = type(op)
                if kind is Call:
                    value = await self._acall(op)
                elif kind is Save:
                    await asyncio.to_thread(_save, self.checkpoints, op)
                elif kind is Sleep:
                    await self.asleep(op.seconds)
                elif kind is Parallel:
                    value = await asyncio.gather(*(self._aoutcome(g) for g in op.gens))
                elif kind is Status:
                    if self.checkpoints is not None:
                        await asyncio.to_thread(self.checkpoints.set_status, op.run_id, op.status,
                                                waiting_for=op.waiting_for)
            except Exception as exc:
                error = exc

    async def _aoutcome(self, gen: Generator[Any, Any, Any]) -> tuple[bool, Any]:
        try:
            return True, await self._adrive(gen)
        except Exception as exc:
            return False, exc


def _fingerprint_args(value: Any) -> dict[str, Any]:
    digest, text = fingerprint(value)
    return {"input_hash": digest, "input_json": text}


def _save(store: CheckpointStore | None, op: Save) -> None:
    try:
        store.save(op.run_id, op.step, op.envelope)  # type: ignore[union-attr]
    except StorageError as exc:
        raise CheckpointError(f"step {op.step!r} of run {op.run_id} ran but could not be saved: {exc}") from exc


_RUN_ID = re.compile(r"[\w.:-]{1,64}", re.ASCII)
