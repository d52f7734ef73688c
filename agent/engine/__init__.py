"""The orchestration engine: flows of nodes, run with retries, timeouts, fan-out and checkpoints."""

from agent.engine.checkpoints import CheckpointRun, CheckpointStore, MemoryCheckpointStore, SqlCheckpointStore
from agent.engine.flow import END, Flow, FlowGraph, Node
from agent.engine.hooks import NodeHooks
from agent.engine.outputs import Output
from agent.engine.policy import NO_RETRY, Retry, compute_backoff
from agent.engine.runner import Engine
from agent.engine.state import FlowState, RunResult

__all__ = [
    "Flow",
    "FlowGraph",
    "Node",
    "END",
    "Output",
    "Engine",
    "FlowState",
    "RunResult",
    "Retry",
    "NO_RETRY",
    "compute_backoff",
    "NodeHooks",
    "CheckpointStore",
    "CheckpointRun",
    "MemoryCheckpointStore",
    "SqlCheckpointStore",
]
