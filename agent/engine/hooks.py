"""Node events: ``node_start`` / ``node_end`` / ``node_error``, to hooks and to logging.

A hook is any object with ``before_node`` and/or ``after_node`` methods taking
keyword-only arguments plus ``**kwargs`` (new context never breaks a hook).
``before_node`` hears ``node_start``; ``after_node`` hears ``node_end`` (with
``envelope``) and ``node_error`` (with ``error`` and ``will_retry``).  A map
node's items each end with a ``node_end`` of their own (step ``node[key]``),
then the node itself with its whole envelope (step ``node``).  A hook that
raises is logged, never propagated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from agent.logs import get_logger

__all__ = ["NodeHooks", "emit"]

log = get_logger("agent.engine")


class NodeHooks:
    """Base class of engine hooks; both methods are no-ops."""

    def before_node(self, *, run_id: str, flow: str, node: str, step: str, attempt: int,
                    **kwargs: Any) -> None:
        """Called as a step starts (each attempt)."""

    def after_node(self, *, run_id: str, flow: str, node: str, step: str, attempt: int,
                   duration_ms: float, envelope: dict[str, Any] | None = None,
                   error: BaseException | None = None, **kwargs: Any) -> None:
        """Called when a step ends, with its ``envelope`` or its ``error``."""


def loggable_step(node: str, step: str) -> str:
    """A step key fit for logs: a map item's key may be personal data (an email), so it is
    shown as a short digest; hooks get the real key."""
    if step.startswith(node + "["):
        return f"{node}[#{hashlib.sha256(step.encode()).hexdigest()[:10]}]"
    return step


def emit(hooks: Sequence[Any], event: str, **kwargs: Any) -> None:
    if event == "node_error":
        if log.isEnabledFor(logging.WARNING):
            error = kwargs["error"]
            log.warning("run %s flow=%s step=%s attempt=%d %s: %s: %s", kwargs["run_id"], kwargs["flow"],
                        loggable_step(kwargs["node"], kwargs["step"]), kwargs["attempt"],
                        "will retry" if kwargs.get("will_retry") else "failed", type(error).__name__, error)
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("run %s flow=%s step=%s attempt=%d %s", kwargs["run_id"], kwargs["flow"],
                  loggable_step(kwargs["node"], kwargs["step"]), kwargs["attempt"], event)
    if not hooks:
        return
    method = "before_node" if event == "node_start" else "after_node"
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is None:
            continue
        try:
            fn(event=event, **kwargs)
        except Exception:
            log.exception("hook %s.%s failed on %s", type(hook).__name__, method, event)
