"""``agent serve``: the HTTP app (one-click unsubscribe) under uvicorn."""

from __future__ import annotations

import typer

__all__ = ["serve"]


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (put a TLS proxy in front: the "
                                                "unsubscribe_base_url users see must be https)."),
    port: int = typer.Option(8000, min=1, max=65535),
) -> None:
    """Serve one-click unsubscribe (POST /u/TOKEN) and its confirm page (GET /u/TOKEN)."""
    from agent.errors import ConfigurationError

    try:
        import uvicorn

        from agent.web import create_app
    except ImportError:
        raise ConfigurationError("agent serve needs the web extra: pip install -e '.[web]'") from None
    # access_log off: a token is opaque, but a request line is still no place for it.
    uvicorn.run(create_app(), host=host, port=port, access_log=False, log_level="warning")
