"""The engine's steps, written once as generators (sans I/O).

A step generator yields small operation values (``agent.engine.ops``:
``Call``, ``Sleep``, ``Parallel``, ``Save``, ``Status``) and receives their
results; the sync and asyncio drivers in ``agent.engine.runner`` carry them out.  So routing,
retries, fan-out, checkpoints and approvals have one implementation for
``run`` and ``arun``.
"""

from __future__ import annotations

import json
import hashlib
import time
from time import perf_counter
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent.engine.flow import END, FanOut, FlowGraph, Node, Route, Then
from agent.engine.hooks import emit
from agent.engine.keys import dedupe, item_key, user_code
from agent.engine.ops import NO_APPROVAL, NO_ITEM, Call, Parallel, Save, Sleep, Status
from agent.engine.outputs import build_envelope, to_envelope
from agent.engine.state import FlowState, RunResult
from agent.envelope import PROVENANCE
from agent.errors import (
    AgentCallError,
    AgentError,
    CheckpointError,
    FlowError,
    InvalidInput,
    LoopLimit,
)
from agent.validation import parse_model

__all__ = ["RunPlan", "fingerprint", "validate_approval"]

def fingerprint(value: Any) -> tuple[str, str]:
    """The run input's hash and JSON text (what a checkpointed run is recognised by)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("input", f"must be JSON-serialisable when checkpoints are on ({exc})") from None
    return hashlib.sha256(text.encode()).hexdigest(), text


@dataclass(slots=True)
class RunPlan:
    """One run in progress: the graph, what checkpoints gave back, and what happened."""

    graph: FlowGraph
    state: FlowState
    saved: dict[str, dict[str, Any]]
    hooks: tuple[Any, ...]
    rng: Any
    checkpointed: bool
    approval: Any = NO_APPROVAL
    # Hooks to call, or debug logging on: node_start / node_end events are worth building.
    observed: bool = True
    restored: list[str] = field(default_factory=list)
    executed: list[str] = field(default_factory=list)
    fanout: FanOut | None = None
    branch_errors: dict[str, AgentError] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.state.context.run_id

    # -- the walk ------------------------------------------------------------------------
    def walk(self) -> Generator[Any, Any, RunResult]:
        graph, state = self.graph, self.state
        visits: dict[str, int] = {}
        cursor = graph.start
        while True:
            node = graph.nodes[cursor]
            step = self._visit(node, visits)
            env = self.saved.get(step)
            if env is not None:
                self.restored.append(step)
            elif node.kind == "approval":
                if self.approval is NO_APPROVAL:
                    yield Status(self.run_id, "paused", cursor)
                    return self._result(state, "paused", waiting_for=cursor)
                env = self._approval(node, state)
                self.approval = NO_APPROVAL
                if self.checkpointed:
                    yield Save(self.run_id, step, env)
                self.executed.append(step)
            elif node.kind == "merge":
                env = yield from self._merge(node, state, step)
            elif node.each is not None:
                env = yield from self._map(node, state, step)
            else:
                env = yield from self._task(node, state, step, upstream=self._join_upstream(cursor, state))
            if self.fanout is not None and self.fanout.join == cursor:
                self.fanout = None  # the join is done: reached again later, it reads its own input
            state = state.update(cursor, env)
            transition = graph.transitions.get(cursor)
            if transition is None:
                break
            if type(transition) is Then:
                cursor = transition.target
            elif type(transition) is Route:
                cursor = self._route(cursor, transition, state)
                if cursor == END:
                    break
            else:
                state = yield from self._fan_out(transition, state, visits)
                cursor = transition.join
        yield Status(self.run_id, "succeeded")
        return self._result(state, "succeeded")

    def _visit(self, node: Node, visits: dict[str, int]) -> str:
        count = visits[node.name] = visits.get(node.name, 0) + 1
        if node.max_visits is not None and count > node.max_visits:
            raise LoopLimit(node.name, f"node visited more than max_visits={node.max_visits} times")
        return node.name if count == 1 else f"{node.name}@{count}"

    def _route(self, source: str, transition: Route, state: FlowState) -> str:
        label = user_code(self.graph.nodes[source], "router", transition.router, state)
        try:
            return transition.routes[label]
        except (KeyError, TypeError):
            raise FlowError(source, f"router returned {label!r}, which is not one of "
                                    f"{sorted(transition.routes)}") from None

    def _join_upstream(self, node: str, state: FlowState) -> list[dict[str, Any]] | None:
        """What a task that joins a fan-out read: every branch's records, not just the last one's."""
        fan = self.fanout
        if fan is None or fan.join != node:
            return None
        return [r for b in fan.branches if b in state for r in state[b]["records"]]

    def _fan_out(self, fan: FanOut, state: FlowState, visits: dict[str, int]) -> Generator[Any, Any, FlowState]:
        gens, names = [], []
        results: dict[str, tuple[bool, Any]] = {}
        # A join restored from a checkpoint settled the branches: one that failed then is not
        # run again now (its result would disagree with the saved join).
        join_visit = visits.get(fan.join, 0) + 1
        join_done = (fan.join if join_visit == 1 else f"{fan.join}@{join_visit}") in self.saved
        for name in fan.branches:
            node = self.graph.nodes[name]
            step = self._visit(node, visits)
            saved = self.saved.get(step)
            if saved is not None:
                self.restored.append(step)
                results[name] = (True, saved)
            elif join_done:
                results[name] = (False, None)
            else:
                names.append(name)
                gens.append(self._map(node, state, step) if node.each is not None else self._task(node, state, step))
        if len(gens) == 1:
            try:
                results[names[0]] = (True, (yield from gens[0]))
            except Exception as exc:
                results[names[0]] = (False, exc)
        elif gens:
            for name, outcome in zip(names, (yield Parallel(gens)), strict=True):
                results[name] = outcome
        self.fanout = fan
        self.branch_errors = {}
        for name in fan.branches:  # declared order, never completion order
            ok, value = results[name]
            if isinstance(value, CheckpointError):
                raise value  # the branch worked; keeping its result did not: that is no branch failure
            if ok:
                state = state.update(name, value)
            elif value is not None:
                self.branch_errors[name] = value
        if self.branch_errors and self.graph.nodes[fan.join].kind != "merge":
            raise next(iter(self.branch_errors.values()))
        return state

    # -- steps ---------------------------------------------------------------------------
    def _task(self, node: Node, state: FlowState, step: str, item: Any = NO_ITEM,
              upstream: list[dict[str, Any]] | None = None) -> Generator[Any, Any, dict]:
        ctx = state.context
        observed = self.observed
        if upstream is not None:
            pass
        elif item is NO_ITEM:
            upstream = state.records()
        else:
            upstream = [item] if isinstance(item, Mapping) and isinstance(item.get(PROVENANCE), Mapping) else []
        attempt = 0
        while True:
            attempt += 1
            if observed:
                emit(self.hooks, "node_start", run_id=ctx.run_id, flow=self.graph.name, node=node.name,
                     step=step, attempt=attempt, state=state)
            started = perf_counter()
            try:
                out = yield Call(node, state, item)
                duration = (perf_counter() - started) * 1000
                env = to_envelope(out, run_id=ctx.run_id, flow=self.graph.name, node=node.name, agent=node.agent,
                                  upstream=upstream, lineage=node.lineage, duration_ms=duration)
            except Exception as exc:
                duration = round((time.perf_counter() - started) * 1000, 3)
                will_retry = node.retry.should_retry(exc, attempt)
                error = _translate(node, exc)
                emit(self.hooks, "node_error", run_id=ctx.run_id, flow=self.graph.name, node=node.name, step=step,
                     attempt=attempt, duration_ms=duration, error=error, will_retry=will_retry, state=state)
                if will_retry:
                    yield Sleep(node.retry.delay(attempt, self.rng()))
                    continue
                if error is exc:
                    raise
                raise error from exc
            if self.checkpointed:
                yield Save(ctx.run_id, step, env)  # a CheckpointError here is no node_end
            if observed:
                emit(self.hooks, "node_end", run_id=ctx.run_id, flow=self.graph.name, node=node.name,
                     step=step, attempt=attempt, duration_ms=duration, envelope=env, state=state)
            self.executed.append(step)
            return env

    def _map(self, node: Node, state: FlowState, step: str) -> Generator[Any, Any, dict]:
        started = time.perf_counter()
        items = user_code(node, "each", lambda s: list(node.each(s)), state)  # type: ignore[misc]
        keyed: list[tuple[str, Any]] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(items):
            key = item_key(node, item, index)
            if key in seen:
                if node.item_key is not None:
                    raise FlowError(node.name, f"two items have the key {key!r}; item keys must be unique")
                # Equal content, no key given: the n-th occurrence is a step of its own.
                seen[key] += 1
                key = f"{key}#{seen[key]}"
            else:
                seen[key] = 1
            keyed.append((key, item))
        outcomes: dict[str, tuple[bool, Any]] = {}
        pending = []
        for key, item in keyed:
            saved = self.saved.get(f"{step}[{key}]")
            if saved is not None:
                self.restored.append(f"{step}[{key}]")
                outcomes[key] = (True, saved)
            else:
                pending.append((key, item))
        lanes = [pending[i::node.concurrency] for i in range(min(node.concurrency, len(pending)))]
        if len(lanes) == 1:
            outcomes.update((yield from self._lane(node, state, step, lanes[0])))
        elif lanes:
            for ok, value in (yield Parallel([self._lane(node, state, step, lane) for lane in lanes])):
                if not ok:
                    raise value
                outcomes.update(value)
        records: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        partial = False
        for key, _ in keyed:
            ok, value = outcomes[key]
            if ok:
                records.extend(value["records"])
                partial = partial or value["metadata"]["partial"]
                errors.extend(value["metadata"]["errors"])
            elif not node.allow_partial:
                raise value
            else:
                errors.append({**_error_item(value), "node": node.name, "item": key})
        failed = sum(1 for ok, _ in outcomes.values() if not ok)
        env = build_envelope(records, run_id=self.run_id, flow=self.graph.name, node=node.name,
                             source=node.agent or node.name, partial=partial or bool(failed), errors=errors,
                             duration_ms=round((time.perf_counter() - started) * 1000, 3),
                             items=len(keyed), failed_items=failed)
        if self.checkpointed:
            yield Save(self.run_id, step, env)
        if self.observed:
            # The map node's own envelope, after its items' (each had a node_end of its own).
            ctx = state.context
            emit(self.hooks, "node_end", run_id=ctx.run_id, flow=self.graph.name, node=node.name, step=step,
                 attempt=1, duration_ms=env["metadata"]["duration_ms"], envelope=env, state=state)
        self.executed.append(step)
        return env

    def _lane(self, node: Node, state: FlowState, step: str,
              entries: list[tuple[str, Any]]) -> Generator[Any, Any, dict[str, tuple[bool, Any]]]:
        done: dict[str, tuple[bool, Any]] = {}
        for key, item in entries:
            try:
                done[key] = (True, (yield from self._task(node, state, f"{step}[{key}]", item)))
            except CheckpointError:
                raise
            except Exception as exc:
                done[key] = (False, exc)
        return done

    def _merge(self, node: Node, state: FlowState, step: str) -> Generator[Any, Any, dict]:
        fan = self.fanout
        assert fan is not None and fan.join == node.name
        failures = self.branch_errors
        if failures and not node.allow_partial:
            raise next(iter(failures.values()))
        ok = [b for b in fan.branches if b in state.results and b not in failures]
        if not ok:
            raise next(iter(failures.values()))
        ctx = state.context
        emit(self.hooks, "node_start", run_id=ctx.run_id, flow=self.graph.name, node=node.name, step=step,
             attempt=1, state=state)
        started = time.perf_counter()
        try:
            env = self._merged(node, state, fan, failures, ok)
        except Exception as exc:
            emit(self.hooks, "node_error", run_id=ctx.run_id, flow=self.graph.name, node=node.name, step=step,
                 attempt=1, duration_ms=round((time.perf_counter() - started) * 1000, 3), error=exc,
                 will_retry=False, state=state)
            raise
        env["metadata"]["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if self.checkpointed:
            yield Save(ctx.run_id, step, env)
        emit(self.hooks, "node_end", run_id=ctx.run_id, flow=self.graph.name, node=node.name, step=step,
             attempt=1, duration_ms=env["metadata"]["duration_ms"], envelope=env, state=state)
        self.executed.append(step)
        return env

    def _merged(self, node: Node, state: FlowState, fan: FanOut, failures: dict[str, AgentError],
                ok: list[str]) -> dict[str, Any]:
        ctx = state.context
        envelopes = {b: state[b] for b in ok}
        errors = [{**_error_item(err), "node": b} for b, err in failures.items()]
        for b in ok:
            errors.extend(envelopes[b]["metadata"]["errors"])
        partial = bool(failures) or any(e["metadata"]["partial"] for e in envelopes.values())
        if node.combine is not None:
            upstream = [r for e in envelopes.values() for r in e["records"]]
            combined = user_code(node, "combine", node.combine, state, envelopes)
            env = to_envelope(combined, run_id=ctx.run_id, flow=self.graph.name,
                              node=node.name, agent=None, upstream=upstream, lineage="all", duration_ms=0.0)
            meta = env["metadata"]
            meta["partial"] = meta["partial"] or partial
            meta["errors"] = meta["errors"] + errors
            return env
        records = user_code(node, "key", dedupe, node, [envelopes[b]["records"] for b in ok])
        only = envelopes[ok[0]]["metadata"] if len(ok) == 1 and not failures else None
        return build_envelope(records, run_id=ctx.run_id, flow=self.graph.name, node=node.name,
                              source=node.name, partial=partial, errors=errors,
                              total_count=only["total_count"] if only else None,
                              branches={b: (len(envelopes[b]["records"]) if b in envelopes else "failed")
                                        for b in fan.branches})

    def _approval(self, node: Node, state: FlowState) -> dict[str, Any]:
        decision = validate_approval(node, self.approval)
        record = {"approval": node.name, **decision.model_dump(mode="json")}
        return to_envelope([record], run_id=self.run_id, flow=self.graph.name, node=node.name, agent=None,
                           upstream=state.records(), lineage="all", duration_ms=0.0)

    def _result(self, state: FlowState, status: str, waiting_for: str | None = None) -> RunResult:
        envelope = state[state.last] if state.last else None
        if envelope is not None and status == "succeeded" and not envelope["metadata"]["partial"] \
                and len(state) > 1:
            upstream = [e for e in state.results.values() if e["metadata"]["partial"]]
            if upstream:
                meta = envelope["metadata"]
                errors = list(meta["errors"])
                for e in upstream:
                    errors.extend(x for x in e["metadata"]["errors"] if x not in errors)
                envelope = {"metadata": {**meta, "partial": True, "errors": errors}, "records": envelope["records"]}
        return RunResult(self.run_id, self.graph.name, status, envelope, state,  # type: ignore[arg-type]
                         waiting_for=waiting_for, restored=tuple(self.restored), executed=tuple(self.executed))


def validate_approval(node: Node, value: Any) -> BaseModel:
    """``value`` as an instance of the approval node's model; ``PayloadError`` names the field."""
    assert node.approval_model is not None
    return parse_model(node.approval_model, value, "approval")


def _translate(node: Node, exc: Exception) -> AgentError:
    if isinstance(exc, AgentError):
        return exc
    return AgentCallError(node.agent or f"node {node.name}", f"{type(exc).__name__}: {exc}")


def _error_item(error: BaseException) -> dict[str, Any]:
    code = getattr(error, "code", None) or type(error).__name__
    return {"code": code, "message": str(error)}
