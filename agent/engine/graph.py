"""Transitions between a flow's nodes, where they lead, and the cycles they make."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Then", "Route", "FanOut", "Transition", "targets", "cycles"]


@dataclass(frozen=True)
class Then:
    target: str


@dataclass(frozen=True)
class Route:
    router: Callable[[Any], str]
    routes: Mapping[str, str]


@dataclass(frozen=True)
class FanOut:
    branches: tuple[str, ...]
    join: str


Transition = Then | Route | FanOut


def targets(transition: Transition) -> tuple[str, ...]:
    if isinstance(transition, Then):
        return (transition.target,)
    if isinstance(transition, Route):
        return tuple(transition.routes.values())
    return (*transition.branches, transition.join)


def cycles(nodes: Mapping[str, Any], transitions: Mapping[str, Transition]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (Tarjan, iterative)."""
    edges = {n: [t for t in targets(transitions[n]) if t in nodes] if n in transitions else [] for n in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            recurse = False
            for j in range(i, len(edges[node])):
                target = edges[node][j]
                if target not in index:
                    work.append((node, j + 1))
                    work.append((target, 0))
                    recurse = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if recurse:
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(component[::-1])
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found
