"""The built-in agents and orchestrators, and the default registry holding them."""

from __future__ import annotations

import threading

from agent.registry import Registry

__all__ = ["register_builtins", "default_registry"]

_default: Registry | None = None
_lock = threading.Lock()


def register_builtins(registry: Registry, *, replace: bool = False) -> Registry:
    from agent.agents.copywriter import CopywriterAgent
    from agent.agents.lead_loader import LeadLoaderAgent
    from agent.agents.lead_search import LeadSearchAgent
    from agent.agents.suppression_gate import SuppressionGateAgent
    from agent.delivery.channels.outbox import OutboxChannel
    from agent.high_level_agents.orchestrators.delivery import DeliveryOrchestrator
    from agent.high_level_agents.orchestrators.lead import LeadOrchestrator
    from agent.high_level_agents.orchestrators.outreach import OutreachOrchestrator

    registry.register("lead_search", LeadSearchAgent, replace=replace)
    registry.register("lead_loader", LeadLoaderAgent, replace=replace)
    registry.register("copywriter", CopywriterAgent, replace=replace)
    registry.register("suppression_gate", SuppressionGateAgent, replace=replace)
    registry.register("outbox", OutboxChannel, replace=replace)
    registry.register("lead_orchestrator", LeadOrchestrator, replace=replace)
    registry.register("delivery_orchestrator", DeliveryOrchestrator, replace=replace)
    registry.register("outreach_orchestrator", OutreachOrchestrator, replace=replace)
    return registry


def default_registry() -> Registry:
    """The process-wide registry of built-ins (plus discovered plug-ins), made on first use.

    Discovery is lenient: a broken or clashing plug-in is logged and skipped,
    so one bad third-party package cannot stop every orchestrator.
    """
    global _default
    with _lock:
        if _default is None:
            registry = register_builtins(Registry())
            registry.discover(strict=False)
            _default = registry
        return _default
