"""``create_app(settings)``: the HTTP app ``agent serve`` runs.

- ``POST /u/{token}``: RFC 8058 one-click unsubscribe.  Unsubscribes at once
  and idempotently (200 every time), with no login, cookie or redirect, and
  withdraws the lead's drafts awaiting approval.  The body a mail client sends
  (``List-Unsubscribe=One-Click``) is not required: the signed token is the
  authority, and the confirm page's form posts the same way.
- ``GET /u/{token}``: a confirm page with a button.  It never unsubscribes:
  link scanners fetch every URL in a message.
- A forged, altered or expired token gets 400 with a plain reason, and nothing
  is written.  Responses carry no address; the log line carries no token.
- ``POST /inbound``: a raw message from a mail provider's webhook, with the
  shared ``X-Agent-Token``; stored raw, then processed by the
  ``ReplyOrchestrator`` (202).  Off unless ``AGENT_INBOUND_WEBHOOK_TOKEN`` is set.
"""

from __future__ import annotations

import hmac
import html
from functools import lru_cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from agent.delivery.unsubscribe import TokenError, apply_unsubscribe, tokens_for
from agent.errors import InvalidInput
from agent.inbound.intake import process_pending
from agent.inbound.store import MAX_BYTES, InboundStore
from agent.settings import Settings, get_settings
from agent.storage.db import Database

__all__ = ["create_app"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 32em; margin: 3em auto">
<h1>{title}</h1>
{content}
</body></html>
"""


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), content=content), status_code=status,
                        headers={"Cache-Control": "no-store"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    tokens = tokens_for(settings)
    db = Database.for_settings(settings)
    app = FastAPI(title="agent", docs_url=None, redoc_url=None, openapi_url=None)

    @lru_cache(maxsize=1)
    def reply_orchestrator() -> Any:
        from agent.high_level_agents.orchestrators import ReplyOrchestrator

        return ReplyOrchestrator(settings=settings)

    @app.get("/u/{token}", response_class=HTMLResponse)
    def confirm(token: str) -> HTMLResponse:
        try:
            tokens.read(token)
        except TokenError as exc:
            return _page("This link does not work", f"<p>The unsubscribe link {html.escape(exc.reason)}.</p>", 400)
        return _page("Unsubscribe", '<p>Stop receiving these emails?</p>'
                     '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
                     '<button type="submit">Unsubscribe</button></form>')

    @app.post("/u/{token}")
    def unsubscribe(token: str) -> PlainTextResponse:
        # The body (List-Unsubscribe=One-Click) is never read: the signed token decides, and nothing
        # an unauthenticated caller sends is buffered.  A plain ``def``: it runs off the event loop.
        try:
            claims = tokens.read(token)
        except TokenError as exc:
            return PlainTextResponse(f"This unsubscribe link {exc.reason}.", status_code=400)
        address, _ = apply_unsubscribe(db, claims, source="one_click")
        if address is None:
            return PlainTextResponse("This unsubscribe link names no message we sent.", status_code=404)
        return PlainTextResponse("You are unsubscribed. You will not get further emails from this sender.",
                                 headers={"Cache-Control": "no-store"})

    @app.post("/inbound")
    async def inbound(request: Request) -> JSONResponse:
        """A raw message (``message/rfc822`` body) from a mail provider's webhook: stored, then processed."""
        expected = settings.inbound_webhook_token
        if expected is None:
            return JSONResponse({"error": "the inbound webhook is off (AGENT_INBOUND_WEBHOOK_TOKEN)"}, 404)
        given = request.headers.get("x-agent-token", "")
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            return JSONResponse({"error": "token: missing or wrong"}, 401)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BYTES:
            return JSONResponse({"error": f"message: over the {MAX_BYTES:,} bytes kept"}, 413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():  # a chunked upload is cut off at the limit, not buffered whole
            size += len(chunk)
            if size > MAX_BYTES:
                return JSONResponse({"error": f"message: over the {MAX_BYTES:,} bytes kept"}, 413)
            chunks.append(chunk)
        store = InboundStore(db, tenant=settings.tenant)
        try:
            stored, new = await run_in_threadpool(store.store, b"".join(chunks), source="webhook")
        except InvalidInput as exc:
            return JSONResponse({"error": f"{exc.field}: {exc.reason}"}, 413 if "bytes" in exc.reason else 400)
        # Processed off the event loop: a model call must not stall the other requests.
        counts = await run_in_threadpool(process_pending, reply_orchestrator(), store, limit=10) if new else {}
        return JSONResponse({"inbound_id": stored.id, "stored": new, "processed": counts}, 202)

    @app.get("/healthz")
    def health() -> PlainTextResponse:
        return PlainTextResponse("ok")

    return app
