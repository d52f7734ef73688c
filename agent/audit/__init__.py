"""Audit stores: one contract, in-memory and SQL implementations."""

from agent.audit.base import (
    FINISHED_STATES,
    RUN_STATES,
    TRANSITIONS,
    AuditDelivery,
    AuditEnvelope,
    AuditFailure,
    AuditRun,
    AuditStore,
    RunState,
)
from agent.audit.memory import InMemoryAuditStore
from agent.audit.sql import SqlAuditStore

__all__ = [
    # the contract
    "AuditStore", "RunState", "RUN_STATES", "FINISHED_STATES", "TRANSITIONS",
    # what queries return
    "AuditRun", "AuditEnvelope", "AuditFailure", "AuditDelivery",
    # stores
    "InMemoryAuditStore", "SqlAuditStore",
]
