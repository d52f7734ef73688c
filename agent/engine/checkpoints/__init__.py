"""Checkpoint stores: one contract, in-memory and SQL implementations."""

from agent.engine.checkpoints.base import CheckpointRun, CheckpointStore, RunStatus
from agent.engine.checkpoints.memory import MemoryCheckpointStore
from agent.engine.checkpoints.sql import SqlCheckpointStore

__all__ = ["CheckpointStore", "CheckpointRun", "RunStatus", "MemoryCheckpointStore", "SqlCheckpointStore"]
