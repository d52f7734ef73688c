"""The target of ``celery -A agent.workers.celery_app worker -Q campaigns``.

Importing this module reads the settings (``AGENT_BROKER_URL`` and the rest)
and builds the Celery app with the job task registered.  ``agent worker
--backend celery`` runs exactly this in a child process that it supervises
(restarting it if it dies on its own), and also publishes again jobs whose
message a broker lost: prefer it.
"""

from agent.workers.celery_worker import worker_app

app = worker_app()
