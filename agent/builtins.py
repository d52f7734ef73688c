"""The built-in agents and orchestrators, and the default registry holding them."""

from __future__ import annotations

import threading

from typing import TYPE_CHECKING

from agent.errors import ConfigurationError
from agent.registry import Registry

if TYPE_CHECKING:
    from agent.settings import Settings

__all__ = ["register_builtins", "default_registry", "load_plugins", "bound_registry"]

_default: Registry | None = None
_lock = threading.Lock()


def register_builtins(registry: Registry, *, replace: bool = False) -> Registry:
    from agent.agents.copywriter import CopywriterAgent
    from agent.agents.enricher import EnricherAgent
    from agent.agents.icp_scorer import ICPScorerAgent
    from agent.agents.lead_loader import LeadLoaderAgent
    from agent.agents.lead_search import LeadSearchAgent
    from agent.agents.semantic_search import SemanticSearchAgent
    from agent.agents.suppression_gate import SuppressionGateAgent
    from agent.delivery.channels.outbox import OutboxChannel
    from agent.delivery.channels.smtp import SmtpChannel
    from agent.high_level_agents.orchestrators.campaign import CampaignOrchestrator
    from agent.high_level_agents.orchestrators.delivery import DeliveryOrchestrator
    from agent.high_level_agents.orchestrators.lead import LeadOrchestrator
    from agent.high_level_agents.orchestrators.outreach import OutreachOrchestrator
    from agent.high_level_agents.orchestrators.reply import ReplyOrchestrator

    registry.register("lead_search", LeadSearchAgent, replace=replace)
    registry.register("semantic_search", SemanticSearchAgent, replace=replace)
    registry.register("lead_loader", LeadLoaderAgent, replace=replace)
    registry.register("copywriter", CopywriterAgent, replace=replace)
    registry.register("enricher", EnricherAgent, replace=replace)
    registry.register("icp_scorer", ICPScorerAgent, replace=replace)
    registry.register("suppression_gate", SuppressionGateAgent, replace=replace)
    registry.register("outbox", OutboxChannel, replace=replace)
    registry.register("smtp", SmtpChannel, replace=replace)
    registry.register("lead_orchestrator", LeadOrchestrator, replace=replace)
    registry.register("delivery_orchestrator", DeliveryOrchestrator, replace=replace)
    registry.register("outreach_orchestrator", OutreachOrchestrator, replace=replace)
    registry.register("campaign_orchestrator", CampaignOrchestrator, replace=replace)
    registry.register("reply_orchestrator", ReplyOrchestrator, replace=replace)
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


def load_plugins(registry: Registry, modules: list[str]) -> Registry:
    """Import each module and call its ``register(registry)``: how a worker process gets the
    agents and orchestrators of a project that is not an installed plug-in (the ``plugins`` setting)."""
    import importlib

    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(f"setting plugins: cannot import {name!r}: {exc}") from exc
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigurationError(f"setting plugins: module {name!r} has no register(registry) function")
        register(registry)
    return registry


def bound_registry(settings: Settings, registry: Registry | None = None) -> Registry:
    """A registry whose orchestrators work on ``settings`` (the database, the outbox), not on the
    process defaults: registered orchestrator classes become instances bound to them.  Without
    ``registry``, the built-ins, discovered plug-ins and the ``plugins`` setting's modules."""
    if registry is None:
        registry = load_plugins(_copy(default_registry()), settings.plugin_modules)
    return _copy(registry, settings)


def _copy(registry: Registry, settings: Settings | None = None) -> Registry:
    from agent.high_level_agents.orchestrators.base import BaseOrchestrator

    bound = Registry()
    for name in registry.list():
        entry = registry.get(name)
        meta = {k: v for k, v in registry.describe(name).items() if k not in ("name", "object")}
        if settings is not None and isinstance(entry, type) and issubclass(entry, BaseOrchestrator):
            entry = entry(bound, settings=settings)
        bound.register(name, entry, **meta)
    return bound
