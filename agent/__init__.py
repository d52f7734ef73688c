"""agent: an orchestration framework and pipeline for outbound B2B sales development.

The public surface is listed in ``__all__`` (kept honest by a test).
"""

from agent.agents.base import BaseAgent
from agent.audit import AuditStore, InMemoryAuditStore, SqlAuditStore
from agent.builtins import default_registry, register_builtins
from agent.campaigns import Campaign, CampaignManager, load_campaign
from agent.context import RunContext
from agent.delivery.suppression import SuppressionList
from agent.dispatch import AgentLimits, BreakerPolicy, Dispatcher, RateLimit, RedisDispatcher
from agent.engine import (
    END,
    CheckpointStore,
    Engine,
    Flow,
    FlowGraph,
    FlowState,
    MemoryCheckpointStore,
    NodeHooks,
    Output,
    Retry,
    RunResult,
    SqlCheckpointStore,
    compute_backoff,
)
from agent.envelope import (
    envelope_json_schema,
    make_envelope,
    make_provenance,
    new_run_id,
    record_hash,
    validate_envelope,
)
from agent.errors import (
    AgentCallError,
    AgentError,
    CheckpointError,
    CircuitOpen,
    ConfigurationError,
    DeliveryError,
    DuplicateName,
    EnvelopeError,
    FlowError,
    InvalidInput,
    LimitTimeout,
    LoopLimit,
    NodeTimeout,
    NotFound,
    PayloadError,
    RegistryError,
    StorageError,
)
from agent.high_level_agents.orchestrators import (
    BaseOrchestrator,
    CampaignOrchestrator,
    DeliveryOrchestrator,
    LeadOrchestrator,
    OutreachOrchestrator,
    ReplyOrchestrator,
)
from agent.leads.importer import import_csv
from agent.leads.query import LeadQuery
from agent.leads.sample import generate_leads
from agent.leads.store import ImportReport, LeadStore
from agent.queues import InMemoryQueue, Job, JobQueue, Queue
from agent.registry import Registry
from agent.settings import Settings, get_settings
from agent.storage.db import Database
from agent.workers import Worker, execute_job

__version__ = "0.1.0"

__all__ = [
    # envelope
    "make_envelope",
    "validate_envelope",
    "record_hash",
    "make_provenance",
    "envelope_json_schema",
    "new_run_id",
    # registry and orchestrators
    "Registry",
    "default_registry",
    "register_builtins",
    "BaseOrchestrator",
    "LeadOrchestrator",
    "DeliveryOrchestrator",
    "OutreachOrchestrator",
    "ReplyOrchestrator",
    "CampaignOrchestrator",
    "BaseAgent",
    "RunContext",
    # engine
    "Flow",
    "FlowGraph",
    "FlowState",
    "END",
    "Engine",
    "RunResult",
    "Output",
    "Retry",
    "compute_backoff",
    "NodeHooks",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "SqlCheckpointStore",
    # campaigns, queues, workers, audit
    "CampaignManager",
    "Campaign",
    "load_campaign",
    "Queue",
    "JobQueue",
    "InMemoryQueue",
    "Job",
    "Worker",
    "execute_job",
    "AuditStore",
    "InMemoryAuditStore",
    "SqlAuditStore",
    # dispatcher
    "Dispatcher",
    "RedisDispatcher",
    "AgentLimits",
    "RateLimit",
    "BreakerPolicy",
    # leads and storage
    "Database",
    "LeadQuery",
    "LeadStore",
    "ImportReport",
    "import_csv",
    "generate_leads",
    "SuppressionList",
    # configuration
    "Settings",
    "get_settings",
    # errors
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
