"""Registry: discovery and metadata for orchestrators, agents and tools.

A registered class is instantiated on resolution (``resolve``); an instance is
used as is.  ``get`` returns what was registered, so the quick start can call
``registry.get("lead_orchestrator")()``.  Third-party plug-ins are found
through the ``agent.plugins`` entry-point group.
"""

from __future__ import annotations

import difflib
import inspect
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.errors import DuplicateName, InvalidInput, NotFound, RegistryError
from agent.logs import get_logger
from agent.validation import first_error

__all__ = ["Registry", "RegistryEntry", "EntryMetadata", "PLUGIN_GROUP"]

PLUGIN_GROUP = "agent.plugins"

log = get_logger("agent.registry")

Kind = Literal["orchestrator", "agent", "tool"]
Capability = Literal["read", "write", "send"]


class EntryMetadata(BaseModel):
    """What the registry knows about a name; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Kind = "agent"
    description: str = ""
    version: str = "0.0.0"
    capabilities: frozenset[Capability] = frozenset()
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    limits: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    obj: Any
    metadata: EntryMetadata

    def describe(self) -> dict[str, Any]:
        data = self.metadata.model_dump()
        data["capabilities"] = sorted(data["capabilities"])
        target = self.obj if _describes_itself(self.obj) else type(self.obj)
        return {"name": self.name, "object": f"{target.__module__}.{target.__qualname__}", **data}


def _describes_itself(obj: Any) -> bool:
    """Classes and functions carry their own name and docstring; instances use their class's."""
    return inspect.isclass(obj) or inspect.isroutine(obj)


def _class_defaults(obj: Any) -> dict[str, Any]:
    """Metadata an agent or orchestrator class declares about itself."""
    defaults: dict[str, Any] = {}
    for key in ("kind", "description", "version", "capabilities", "limits"):
        value = getattr(obj, key, None)
        if value is not None and not callable(value):
            defaults[key] = value
    if "description" not in defaults:
        doc = inspect.getdoc(obj if _describes_itself(obj) else type(obj)) or ""
        defaults["description"] = doc.split("\n\n", 1)[0].replace("\n", " ")
    model = getattr(obj, "payload_model", None)
    if inspect.isclass(model) and issubclass(model, BaseModel):
        defaults["input_schema"] = model.model_json_schema()
    return defaults


class Registry:
    """Names → orchestrators, operational agents and tools, with metadata."""

    def __init__(self) -> None:
        self._entries: dict[str, RegistryEntry] = {}
        self._instances: dict[str, Any] = {}
        self._lock = threading.RLock()

    def register(self, name: str, obj: Any, *, replace: bool = False, **metadata: Any) -> Any:
        """Register ``obj`` under ``name``; returns ``obj`` so it can decorate."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidInput("name", "must be a non-empty string")
        try:
            meta = EntryMetadata(**{**_class_defaults(obj), **metadata})
        except ValidationError as exc:
            raise InvalidInput(*first_error(exc, prefix="metadata")) from None
        with self._lock:
            if name in self._entries and not replace:
                raise DuplicateName(name)
            self._entries[name] = RegistryEntry(name, obj, meta)
            self._instances.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entry(name)
            del self._entries[name]
            self._instances.pop(name, None)

    def get(self, name: str) -> Any:
        """What was registered under ``name`` (a class or an instance)."""
        return self._entry(name).obj

    def resolve(self, name: str, **kwargs: Any) -> Any:
        """An instance for ``name``: classes are instantiated once and cached.

        ``kwargs`` are passed to the constructor and bypass the cache.
        """
        entry = self._entry(name)
        if not inspect.isclass(entry.obj):
            return entry.obj
        if kwargs:
            return entry.obj(**kwargs)
        with self._lock:
            instance = self._instances.get(name)
            if instance is None:
                instance = self._instances[name] = entry.obj()
            return instance

    def describe(self, name: str) -> dict[str, Any]:
        return self._entry(name).describe()

    def list(self, kind: Kind | None = None) -> list[str]:
        with self._lock:
            return sorted(n for n, e in self._entries.items() if kind is None or e.metadata.kind == kind)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def discover(self, group: str = PLUGIN_GROUP, *, replace: bool = False, strict: bool = True) -> list[str]:
        """Load plug-ins from installed distributions' entry points.

        An entry point may name a class or instance (registered under the entry
        point's name) or a function ``setup(registry)`` that registers itself.
        With ``strict`` a plug-in that fails (to load, in setup, or on a name
        already taken) raises a ``RegistryError`` naming it; without, it is
        logged and skipped so the other plug-ins and the built-ins still work.
        """
        added: list[str] = []
        for ep in entry_points(group=group):
            try:
                added.extend(self._load_plugin(ep, replace=replace))
            except Exception as exc:
                if strict:
                    raise
                log.warning("plug-in %r skipped: %s", ep.name, exc)
                log.debug("plug-in %r traceback", ep.name, exc_info=exc)
        return added

    def _load_plugin(self, ep: EntryPoint, *, replace: bool) -> list[str]:
        """Register one entry point; returns the names it added, or raises."""
        try:
            target = ep.load()
        except Exception as exc:  # a third party's import error, translated
            raise RegistryError(f"plug-in {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if inspect.isclass(target) or hasattr(target, "run"):
            self.register(ep.name, target, replace=replace)
            return [ep.name]
        if callable(target):
            before = set(self._entries)
            try:
                target(self)
            except Exception as exc:
                # Leave no half-registered plug-in behind.
                for name in set(self._entries) - before:
                    self.unregister(name)
                raise RegistryError(f"plug-in {ep.name!r} setup failed: {exc}") from exc
            return sorted(set(self._entries) - before)
        raise RegistryError(f"plug-in {ep.name!r} is neither a class, an instance nor a setup function")

    def _entry(self, name: str) -> RegistryEntry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
            raise NotFound(name, close) from None

    def __repr__(self) -> str:
        return f"<Registry {len(self._entries)} entries>"

