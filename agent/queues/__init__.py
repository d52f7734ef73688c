"""The queue family: the ``Job`` contract, the ``Queue`` verbs and their backends.

``InMemoryQueue`` keeps everything in the process (tests, the embedded setup);
broker-backed queues implement the same ``Queue`` verbs and pass the same
contract tests.
"""

from agent.queues.base import Job, Queue, QueueStats, check_topic
from agent.queues.memory import InMemoryQueue

__all__ = [
    "Queue",
    "InMemoryQueue",
    "Job",
    "QueueStats",
    "check_topic",
]
