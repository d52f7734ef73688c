"""``agent worker``: run jobs from a broker with Celery workers."""

from __future__ import annotations

from typing import Optional

import typer

__all__ = ["worker"]


def worker(
    backend: str = typer.Option("celery", help="Queue backend: celery (the in-memory queue's workers run "
                                               "inside `agent campaign run`)."),
    broker: Optional[str] = typer.Option(None, help="Broker URL (default: the broker_url setting, "
                                                    "AGENT_BROKER_URL; prefer it: a password on the "
                                                    "command line shows in the process list)."),
    topic: list[str] = typer.Option(["campaigns"], "--topic", "-Q", help="Topic (Celery queue) to serve; repeatable."),
    concurrency: int = typer.Option(2, min=1, max=256, help="Worker processes."),
    loglevel: str = typer.Option("WARNING", help="Celery's log level."),
    hostname: Optional[str] = typer.Option(None, help="Worker node name (default: celery@<host>)."),
) -> None:
    """Serve TOPIC from the broker: late acks, prefetch 1, retries, dead letters, SIGTERM finishes the job in hand."""
    from agent.errors import InvalidInput
    from agent.queues.base import check_topic
    from agent.settings import get_settings
    from agent.workers.celery_worker import run_celery_worker

    if backend != "celery":
        raise InvalidInput("backend", "must be celery: the in-memory queue lives in one process, and its worker "
                                      "threads run inside `agent campaign run --threads N`")
    for name in topic:
        check_topic(name)
    settings = get_settings(**({"broker_url": broker} if broker else {}))
    status = run_celery_worker(settings, topics=list(topic), concurrency=concurrency, loglevel=loglevel.upper(),
                               hostname=hostname)
    raise typer.Exit(status)
