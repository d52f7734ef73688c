"""The target of ``celery -A agent.workers.celery_app worker -Q campaigns``.

Importing this module reads the settings (``AGENT_BROKER_URL`` and the rest)
and builds the Celery app with the job task registered.  ``agent worker
--backend celery`` runs exactly this in a child process that it supervises
(restarting it if it dies on its own), and also publishes again jobs whose
message a broker lost: prefer it.
"""

from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger

from agent.logs import RedactingFilter
from agent.workers.celery_worker import worker_app

app = worker_app()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redact_celery_logs(logger: Any = None, **kwargs: Any) -> None:
    # Celery logs task arguments (a job's payload) and failures: through the same redaction as ours.
    for handler in getattr(logger, "handlers", []):
        handler.addFilter(RedactingFilter())
