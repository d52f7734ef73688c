"""Flow state (immutable between nodes) and the result of a run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from agent.context import RunContext

__all__ = ["FlowState", "RunResult"]


class FlowState(Mapping[str, dict[str, Any]]):
    """What a node can read: the flow input and every completed node's envelope.

    A mapping of node name to envelope.  ``update`` returns a new state and
    leaves this one as it was, so a node never sees another node's changes
    except through the envelope that node returned.  Envelopes are shared, not
    copied: treat them as values and return new records instead of editing them.
    """

    __slots__ = ("input", "context", "last", "_results")

    def __init__(self, input: Any, context: RunContext, results: Mapping[str, dict[str, Any]] | None = None,
                 last: str | None = None) -> None:
        self.input = input
        self.context = context
        self.last = last
        self._results: dict[str, dict[str, Any]] = dict(results or {})

    # Mapping protocol over the results.
    def __getitem__(self, node: str) -> dict[str, Any]:
        return self._results[node]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def results(self) -> Mapping[str, dict[str, Any]]:
        return MappingProxyType(self._results)

    @property
    def run_id(self) -> str:
        return self.context.run_id

    @property
    def tenant(self) -> str:
        return self.context.tenant

    def records(self, node: str | None = None) -> list[dict[str, Any]]:
        """The records of ``node`` (default: the node that ran last); [] if it has not run."""
        name = node or self.last
        envelope = self._results.get(name) if name else None
        return envelope["records"] if envelope else []

    def update(self, node: str, envelope: dict[str, Any]) -> FlowState:
        results = dict(self._results)
        results[node] = envelope
        state = FlowState.__new__(FlowState)
        state.input, state.context, state.last = self.input, self.context, node
        state._results = results
        return state

    def __repr__(self) -> str:
        return f"<FlowState run_id={self.run_id!r} nodes={list(self._results)}>"


@dataclass(slots=True)
class RunResult:
    """How a run ended: ``succeeded`` with its final envelope, or ``paused`` at an approval."""

    run_id: str
    flow: str
    status: Literal["succeeded", "paused"]
    envelope: dict[str, Any] | None
    state: FlowState = field(repr=False)
    waiting_for: str | None = None
    # Steps whose checkpoint was reused instead of running them again.
    restored: tuple[str, ...] = ()
    executed: tuple[str, ...] = ()

    @property
    def paused(self) -> bool:
        return self.status == "paused"
