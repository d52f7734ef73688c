"""Flow definition: a builder of named nodes and transitions, checked when built.

::

    flow = (Flow("lead")
            .node("parse", parse_query)
            .node("fuzzy", agent="lead_search", request=fuzzy_request)
            .node("semantic", agent="vector_search", request=semantic_request)
            .merge("merged", key="lead_id", allow_partial=True)
            .node("rank", rank)
            .fan_out("parse", ["fuzzy", "semantic"], join="merged")
            .then("merged", "rank")
            .build())

A node is a plain function of the (immutable) ``FlowState`` or an operational
agent called through the registry.  Each node has at most one way out: ``then``
(sequence), ``route`` (a router picks a label) or ``fan_out`` (branches run in
parallel, then ``join``).  A node without a way out ends the run.  Loops are
routes back to an earlier node; every cycle needs a node with ``max_visits``.
``build()`` refuses a malformed flow with a ``FlowError`` naming the node.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from agent.engine.graph import FanOut, Route, Then, Transition, cycles, targets
from agent.engine.policy import NO_RETRY, Retry
from agent.errors import FlowError

__all__ = ["Flow", "FlowGraph", "Node", "Then", "Route", "FanOut", "END"]

END = "__end__"
_NAME = re.compile(r"[A-Za-z_][\w.-]{0,63}", re.ASCII)

NodeKind = Literal["task", "merge", "approval"]


@dataclass(frozen=True)
class Node:
    """One step of a flow and its policy (see ``Flow.node`` for the fields)."""

    name: str
    kind: NodeKind = "task"
    fn: Callable[..., Any] | None = None
    agent: str | None = None
    request: Callable[..., Any] | None = None
    each: Callable[[Any], Iterable[Any]] | None = None
    item_key: str | Callable[[Any], Any] | None = None
    concurrency: int = 4
    retry: Retry = NO_RETRY
    timeout: float | None = None
    allow_partial: bool = False
    max_visits: int | None = None
    lineage: str | tuple[str, str] | None = "all"
    limit_key: Callable[[Any], Mapping[str, str]] | None = None
    merge_key: str | Callable[[Mapping[str, Any]], Any] | None = None
    combine: Callable[..., Any] | None = None
    approval_model: type[BaseModel] | None = None
    description: str = ""




@dataclass(frozen=True)
class FlowGraph:
    """A built, checked flow: what the engine runs.  Immutable."""

    name: str
    start: str
    nodes: Mapping[str, Node]
    transitions: Mapping[str, Transition]
    agents: frozenset[str] = field(default=frozenset())
    # The run input's model: a stored input (JSON) is validated back into it on resume.
    input_model: type[BaseModel] | None = None

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def describe(self) -> dict[str, Any]:
        """The graph as plain data: nodes with their policy, and each node's way out."""
        nodes = []
        for node in self.nodes.values():
            out = self.transitions.get(node.name)
            entry: dict[str, Any] = {
                "name": node.name, "kind": "map" if node.each is not None else node.kind,
                "agent": node.agent, "description": node.description,
                "retry": node.retry.max_attempts, "timeout": node.timeout, "allow_partial": node.allow_partial,
                "max_visits": node.max_visits,
            }
            if isinstance(out, Then):
                entry["then"] = out.target
            elif isinstance(out, Route):
                entry["routes"] = dict(out.routes)
            elif isinstance(out, FanOut):
                entry["fan_out"] = {"branches": list(out.branches), "join": out.join}
            nodes.append(entry)
        return {"flow": self.name, "start": self.start, "nodes": nodes}

    def to_mermaid(self) -> str:
        """A Mermaid ``flowchart`` of the graph (paste it into any Markdown that renders Mermaid)."""
        lines = ["flowchart TD"]
        shapes = {"merge": ("{{", "}}"), "approval": ("[/", "/]")}
        for node in self.nodes.values():
            left, right = shapes.get(node.kind, ("[", "]"))
            label = f"{node.name}<br/>agent: {node.agent}" if node.agent else node.name
            lines.append(f'    {_mermaid_id(node.name)}{left}"{label}"{right}')
        for source, out in self.transitions.items():
            if isinstance(out, Then):
                lines.append(f"    {_mermaid_id(source)} --> {_mermaid_id(out.target)}")
            elif isinstance(out, Route):
                for label, target in out.routes.items():
                    lines.append(f"    {_mermaid_id(source)} -- {label} --> {_mermaid_id(target)}")
            else:
                for branch in out.branches:
                    lines.append(f"    {_mermaid_id(source)} -.-> {_mermaid_id(branch)}")
        return "\n".join(lines)


class Flow:
    """Builder of a ``FlowGraph``; every method returns the builder."""

    def __init__(self, name: str, *, input_model: type[BaseModel] | None = None) -> None:
        _check_name(name, "flow")
        if input_model is not None and not (isinstance(input_model, type) and issubclass(input_model, BaseModel)):
            raise FlowError(name, "input_model must be a pydantic model class")
        self.name = name
        self.input_model = input_model
        self._nodes: dict[str, Node] = {}
        self._transitions: dict[str, Transition] = {}
        self._start: str | None = None

    # -- nodes ---------------------------------------------------------------------------
    def node(self, name: str, fn: Callable[..., Any] | None = None, *, agent: str | None = None,
             request: Callable[..., Any] | None = None, each: Callable[[Any], Iterable[Any]] | None = None,
             key: str | Callable[[Any], Any] | None = None, concurrency: int = 4,
             retry: Retry | None = None, timeout: float | None = None, allow_partial: bool = False,
             max_visits: int | None = None, lineage: str | tuple[str, str] | None = "all",
             limit_key: Callable[[Any], Mapping[str, str]] | None = None, description: str = "") -> Flow:
        """Add a task node: ``fn(state)`` or the registered ``agent`` (exactly one).

        - ``request(state)`` builds the agent's request (default: the flow input).
        - ``each(state)`` makes a map node: ``fn(item, state)`` (or the agent with
          ``request(item, state)``, default the item) runs once per item, up to
          ``concurrency`` at a time; ``key`` (a field name or a function of the item)
          gives each item its stable step key for checkpoints.
        - ``retry``, ``timeout`` (seconds) and ``allow_partial`` (a map node keeps the
          items that worked and marks the envelope ``partial``) are the node's policy.
        - ``max_visits`` bounds how often a loop may come back here.
        - ``lineage``: which upstream records a new record derives from: ``"all"``
          (every record the node read), a field name (upstream records with the same
          value), a pair ``(field, upstream_field)`` (upstream records whose
          ``upstream_field`` equals the record's ``field``) or ``None``.
        - ``limit_key(state)`` gives the Dispatcher's rate-limit key (tenant, campaign).
        """
        if (fn is None) == (agent is None):
            raise FlowError(name, "needs exactly one of a function or agent=")
        if fn is not None and not callable(fn):
            raise FlowError(name, "fn must be callable")
        if agent is not None and not (isinstance(agent, str) and agent):
            raise FlowError(name, "agent= must be a registered name")
        if request is not None and agent is None:
            raise FlowError(name, "request= only applies to an agent node")
        if key is not None and each is None:
            raise FlowError(name, "key= only applies to a map node (each=)")
        if not (_integer(concurrency) and 1 <= concurrency <= 1024):
            raise FlowError(name, "concurrency must be an integer from 1 to 1024")
        if not (lineage is None or (isinstance(lineage, str) and lineage) or (
                isinstance(lineage, tuple) and len(lineage) == 2 and all(isinstance(f, str) and f for f in lineage))):
            raise FlowError(name, 'lineage must be "all", a field name, a pair of field names or None')
        self._add(Node(name=name, fn=fn, agent=agent, request=request, each=each, item_key=key,
                       concurrency=concurrency, retry=self._retry(name, retry),
                       timeout=self._timeout(name, timeout), allow_partial=bool(allow_partial),
                       max_visits=self._visits(name, max_visits), lineage=lineage,
                       limit_key=limit_key, description=description))
        return self

    def merge(self, name: str, *, key: str | Callable[[Mapping[str, Any]], Any] | None = None,
              combine: Callable[..., Any] | None = None, allow_partial: bool = False,
              description: str = "") -> Flow:
        """Add the join of a fan-out: the branches' records, de-duplicated by ``key``.

        Records keep the order of the branches as declared (never completion order);
        the first occurrence of a key wins.  ``combine(state, envelopes)`` replaces
        the default merge.  With ``allow_partial`` a failed branch leaves its error in
        ``metadata.errors`` and ``metadata.partial`` set; otherwise it fails the run.
        """
        if combine is not None and not callable(combine):
            raise FlowError(name, "combine must be callable")
        self._add(Node(name=name, kind="merge", merge_key=key, combine=combine,
                       allow_partial=bool(allow_partial), description=description))
        return self

    def approval(self, name: str, model: type[BaseModel], *, description: str = "") -> Flow:
        """Add a node that pauses the run until an approval (an instance of ``model``) comes."""
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise FlowError(name, "the approval model must be a pydantic model class")
        self._add(Node(name=name, kind="approval", approval_model=model, description=description))
        return self

    # -- transitions -----------------------------------------------------------------------
    def then(self, *names: str) -> Flow:
        """A sequence: ``then("a", "b", "c")`` runs a, then b, then c."""
        if len(names) < 2:
            raise FlowError(names[0] if names else "then", "then() needs at least two nodes")
        for source, target in zip(names, names[1:]):
            self._set(source, Then(target))
        return self

    def route(self, source: str, router: Callable[[Any], str], routes: Mapping[str, str]) -> Flow:
        """After ``source``, ``router(state)`` returns a label; ``routes[label]`` runs next (or ``END``)."""
        if not callable(router):
            raise FlowError(source, "router must be callable")
        if not routes:
            raise FlowError(source, "route() needs at least one label")
        self._set(source, Route(router, dict(routes)))
        return self

    def fan_out(self, source: str, branches: Sequence[str], *, join: str) -> Flow:
        """After ``source``, run ``branches`` in parallel, then ``join`` with all their results."""
        branches = tuple(branches)
        if not branches:
            raise FlowError(source, "fan_out() needs at least one branch")
        if len(set(branches)) != len(branches):
            raise FlowError(source, "fan_out() lists a branch twice")
        if join in branches or join == source:
            raise FlowError(join, "a join cannot also be the source or a branch of its fan-out")
        self._set(source, FanOut(branches, join))
        for branch in branches:
            self._set(branch, Then(join))
        return self

    def start(self, name: str) -> Flow:
        self._start = name
        return self

    # -- build -----------------------------------------------------------------------------
    def build(self) -> FlowGraph:
        """Check the whole graph and freeze it; a problem raises ``FlowError`` naming the node."""
        if not self._nodes:
            raise FlowError(self.name, "a flow needs at least one node")
        start = self._start or next(iter(self._nodes))
        if start not in self._nodes:
            raise FlowError(start, f"start node is not defined in flow {self.name!r}")
        joins = {t.join for t in self._transitions.values() if isinstance(t, FanOut)}
        for source, transition in self._transitions.items():
            if source not in self._nodes:
                raise FlowError(source, "has a transition but is not a defined node")
            for target in targets(transition):
                if target != END and target not in self._nodes:
                    raise FlowError(source, f"transition to unknown node {target!r}")
            if isinstance(transition, FanOut) and self._nodes[transition.join].kind == "approval":
                raise FlowError(transition.join, "an approval node cannot join a fan-out")
        for node in self._nodes.values():
            if node.kind == "merge" and node.name not in joins:
                raise FlowError(node.name, "a merge node must be the join of a fan_out()")
        self._check_fan_outs()
        if start in {b for t in self._transitions.values() if isinstance(t, FanOut) for b in t.branches} \
                or self._nodes[start].kind == "merge":
            raise FlowError(start, "a fan-out's branch or merge cannot be where the flow starts")
        reachable = self._reachable(start)
        for name in self._nodes:
            if name not in reachable:
                raise FlowError(name, f"is not reachable from the start node {start!r}")
        # Every cycle needs a bounded node: with the bounded nodes taken out, no cycle may remain.
        unbounded = {n: node for n, node in self._nodes.items() if not node.max_visits}
        for component in cycles(unbounded, self._transitions):
            raise FlowError(component[0], "is on a cycle without a bound: set max_visits= on a node "
                                          f"of the loop ({' -> '.join(component)})")
        agents = frozenset(n.agent for n in self._nodes.values() if n.agent)
        return FlowGraph(self.name, start, dict(self._nodes), dict(self._transitions), agents, self.input_model)

    # -- helpers ---------------------------------------------------------------------------
    def _check_fan_outs(self) -> None:
        """A branch is a task reached only from its fan-out; a join only from its branches."""
        arrivals: dict[str, set[str]] = {}
        for source, transition in self._transitions.items():
            for target in targets(transition):
                arrivals.setdefault(target, set()).add(source)
        for source, transition in self._transitions.items():
            if not isinstance(transition, FanOut):
                continue
            for branch in transition.branches:
                if self._nodes[branch].kind != "task":
                    raise FlowError(branch, "a fan-out branch must be a task (a function or an agent)")
                if arrivals.get(branch, set()) != {source}:
                    raise FlowError(branch, f"is a branch of the fan-out after {source!r}, so no other "
                                            "node may lead to it")
            if self._nodes[transition.join].kind == "merge" and \
                    arrivals.get(transition.join, set()) - set(transition.branches) - {source}:
                raise FlowError(transition.join, "a merge is reached only from its fan-out's branches")

    def _add(self, node: Node) -> None:
        _check_name(node.name, "node")
        if node.name == END:
            raise FlowError(node.name, "is reserved for the end of a flow")
        if node.name in self._nodes:
            raise FlowError(node.name, f"is defined twice in flow {self.name!r}")
        self._nodes[node.name] = node

    def _set(self, source: str, transition: Transition) -> None:
        if source == END:
            raise FlowError(source, "the end of a flow has no way out")
        current = self._transitions.get(source)
        if current is not None and current != transition:
            raise FlowError(source, "already has a way out; a node has one then/route/fan_out")
        self._transitions[source] = transition

    def _reachable(self, start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            transition = self._transitions.get(todo.pop())
            for target in targets(transition) if transition else ():
                if target != END and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    @staticmethod
    def _retry(name: str, retry: Retry | None) -> Retry:
        if retry is None:
            return NO_RETRY
        if not isinstance(retry, Retry):
            raise FlowError(name, "retry= must be a Retry value")
        return retry

    @staticmethod
    def _timeout(name: str, timeout: float | None) -> float | None:
        if timeout is not None and not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                                        and 0 < timeout <= 86_400):
            raise FlowError(name, "timeout must be a number of seconds above 0 (at most a day)")
        return timeout

    @staticmethod
    def _visits(name: str, visits: int | None) -> int | None:
        if visits is not None and not (_integer(visits) and visits >= 1):
            raise FlowError(name, "max_visits must be an integer >= 1")
        return visits


def _mermaid_id(name: str) -> str:
    return "END" if name == END else "n_" + re.sub(r"[^\w]", "_", name)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise FlowError(str(name), f"is not a valid {what} name (letters, digits, _ . -; at most 64)")
