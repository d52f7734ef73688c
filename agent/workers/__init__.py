"""Workers: the job-execution function and the thread-pool Worker that runs it from a queue."""

from agent.workers.execute import JobOutcome, execute_job, retry_delay
from agent.workers.worker import Worker

__all__ = ["Worker", "execute_job", "JobOutcome", "retry_delay"]
