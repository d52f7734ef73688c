"""The project's exception tree.

Every error the package raises on purpose is an ``AgentError``; errors from
libraries below (SQLAlchemy, pydantic, the email stack) are translated at the
adapter boundary with ``raise X(...) from exc`` so callers catch one tree::

    AgentError
    ├── ConfigurationError        settings that cannot work (bad URL, bad path)
    ├── InvalidInput              bad input from a caller; names field + reason
    │   ├── EnvelopeError         an envelope that breaks the canonical contract
    │   ├── PayloadError          an orchestrator payload that fails its model
    │   └── FlowError             a flow that cannot run (unknown node, unbounded cycle...)
    ├── RegistryError
    │   ├── NotFound              lookup miss; carries close-name suggestions
    │   └── DuplicateName         name already registered (pass replace=True)
    ├── StorageError              the database refused or failed an operation
    │   └── CheckpointError       a completed step could not be saved
    ├── AgentCallError            an operational agent failed while running
    │   ├── NodeTimeout           a node ran past its timeout
    │   ├── LimitTimeout          no concurrency slot or rate token within the wait
    │   ├── CircuitOpen           the agent's circuit breaker is open: failing fast
    │   └── LoopLimit             a node was visited more often than its bound
    └── DeliveryError             a channel could not hand a message over
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AgentError",
    "ConfigurationError",
    "InvalidInput",
    "EnvelopeError",
    "PayloadError",
    "RegistryError",
    "NotFound",
    "DuplicateName",
    "StorageError",
    "CheckpointError",
    "AgentCallError",
    "NodeTimeout",
    "LimitTimeout",
    "CircuitOpen",
    "LoopLimit",
    "FlowError",
    "DeliveryError",
]


class AgentError(Exception):
    """Root of every error raised on purpose by this package."""

    code = "agent_error"

    def to_dict(self) -> dict[str, str]:
        """The error as an envelope ``errors`` item (without ``node``)."""
        return {"code": self.code, "message": str(self)}

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled whole (a worker process hands its errors back): a subclass whose ``__init__``
        # takes other arguments than its message would not unpickle through ``cls(*args)``.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[AgentError], args: tuple[object, ...], state: dict[str, object]) -> AgentError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class ConfigurationError(AgentError):
    code = "configuration_error"


class InvalidInput(AgentError):
    """Bad input: ``field`` is a dotted path (``records[3].to``), ``reason`` why."""

    code = "invalid_input"

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class EnvelopeError(InvalidInput):
    code = "invalid_envelope"


class PayloadError(InvalidInput):
    code = "invalid_payload"


class FlowError(InvalidInput):
    """A malformed flow, refused when built; ``field`` names the node."""

    code = "invalid_flow"


class RegistryError(AgentError):
    code = "registry_error"


class NotFound(RegistryError, LookupError):
    """A name that is not registered; ``suggestions`` holds close names."""

    code = "not_found"

    def __init__(self, name: str, suggestions: Sequence[str] = ()) -> None:
        self.name = name
        self.suggestions = list(suggestions)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"nothing registered as {name!r}.{hint}")


class DuplicateName(RegistryError):
    code = "duplicate_name"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"{name!r} is already registered; pass replace=True to replace it")


class StorageError(AgentError):
    code = "storage_error"


class CheckpointError(StorageError):
    """A step ran but its envelope could not be saved: the run stops (it must not look done)."""

    code = "checkpoint_error"


class AgentCallError(AgentError):
    """An operational agent raised while running; the cause is chained."""

    code = "agent_call_failed"

    def __init__(self, agent: str, message: str) -> None:
        self.agent = agent
        super().__init__(f"agent {agent!r} failed: {message}")


class NodeTimeout(AgentCallError, TimeoutError):
    code = "node_timeout"


class LimitTimeout(AgentCallError, TimeoutError):
    """No slot or token came within ``acquire_timeout``; the caller waited, then gave up."""

    code = "limit_timeout"


class CircuitOpen(AgentCallError):
    """The agent failed too often lately; calls fail fast until a probe succeeds."""

    code = "circuit_open"


class LoopLimit(AgentCallError):
    code = "loop_limit"


class DeliveryError(AgentError):
    code = "delivery_error"
