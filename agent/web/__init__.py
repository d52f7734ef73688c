"""The project's HTTP app (FastAPI): one-click unsubscribe today; later issues extend it into the API."""

from agent.web.app import create_app

__all__ = ["create_app"]
