"""The target of ``celery -A agent.workers.celery_app worker -Q campaigns``.

Importing this module reads the settings (``AGENT_BROKER_URL`` and the rest)
and builds the Celery app with the job task registered.  ``agent worker
--backend celery`` does the same and also publishes again jobs whose message
a broker lost.
"""

from agent.workers.celery_worker import worker_app

app = worker_app()
