"""The operations a step generator yields, and the driver carries out.

Plain slotted classes: one is built on every step, so they stay cheap.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.engine.flow import Node
    from agent.engine.state import FlowState

__all__ = ["Call", "Sleep", "Parallel", "Save", "Status", "NO_APPROVAL", "NO_ITEM"]

NO_APPROVAL: Any = object()
NO_ITEM: Any = object()


class Call:
    __slots__ = ("node", "state", "item")

    def __init__(self, node: Node, state: FlowState, item: Any = NO_ITEM) -> None:
        self.node, self.state, self.item = node, state, item

    @property
    def has_item(self) -> bool:
        return self.item is not NO_ITEM


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Parallel:
    """Run these generators at once; the result is a list of ``(ok, value_or_error)``."""

    __slots__ = ("gens",)

    def __init__(self, gens: list[Generator[Any, Any, Any]]) -> None:
        self.gens = gens


class Save:
    __slots__ = ("run_id", "step", "envelope")

    def __init__(self, run_id: str, step: str, envelope: dict[str, Any]) -> None:
        self.run_id, self.step, self.envelope = run_id, step, envelope


class Status:
    __slots__ = ("run_id", "status", "waiting_for")

    def __init__(self, run_id: str, status: str, waiting_for: str | None = None) -> None:
        self.run_id, self.status, self.waiting_for = run_id, status, waiting_for
