"""The queue family: the ``Job`` contract, the ``Queue`` verbs and their backends.

``InMemoryQueue`` keeps everything in the process (tests, the embedded setup);
``CeleryQueue`` (``agent.queues.celery_queue``, the ``celery`` extra) publishes
to Celery workers on Redis or RabbitMQ and keeps each job's state in our
database (``SqlJobLedger``).  Both pass one contract suite.
"""

from agent.queues.base import Job, JobQueue, Queue, QueueStats, check_topic
from agent.queues.memory import InMemoryQueue

__all__ = [
    "JobQueue",
    "Queue",
    "InMemoryQueue",
    "Job",
    "QueueStats",
    "check_topic",
]
