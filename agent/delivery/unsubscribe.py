"""One-click unsubscribe tokens (RFC 8058): opaque, signed, naming the tenant, campaign, lead and step.

A token is ``<payload>.<signature>``: the payload is URL-safe base64 of a
compact JSON list ``[version, tenant, campaign_id, lead_id, step, issued
day]``, and the signature HMAC-SHA256 of the payload under the tenant
deployment's secret, truncated to 128 bits.  It carries no address: a link
scanner or an access log that sees it learns nothing personal, and the
address is looked up where the message was recorded.

The secret is ``AGENT_UNSUBSCRIBE_SECRET`` or, on the embedded defaults, a
random key made once in the data directory (mode 0600).  A token older than
``AGENT_UNSUBSCRIBE_TOKEN_DAYS`` (default a year: the law asks for at least 30
days) is refused as expired; any change to it is refused as forged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from typing import Any
from datetime import date, datetime, timezone
from pathlib import Path
from urllib.parse import quote

from agent.errors import ConfigurationError, InvalidInput
from agent.settings import Settings

__all__ = ["UnsubscribeToken", "TokenError", "Unsubscribe", "apply_unsubscribe", "secret_for", "tokens_for",
           "unsubscribe_url"]

_VERSION = 1
_EPOCH = date(2020, 1, 1)


class TokenError(InvalidInput):
    """An unsubscribe token that is malformed, forged or expired (``reason`` says which)."""

    code = "invalid_unsubscribe_token"

    def __init__(self, reason: str) -> None:
        super().__init__("token", reason)


@dataclass(frozen=True)
class Unsubscribe:
    tenant: str
    campaign_id: str
    lead_id: str
    step: int
    issued: date


class UnsubscribeToken:
    def __init__(self, secret: bytes, *, max_age_days: int = 365) -> None:
        if len(secret) < 16:
            raise ValueError("an unsubscribe secret needs at least 16 bytes")
        self._secret = secret
        self.max_age_days = max_age_days

    def make(self, tenant: str, campaign_id: str, lead_id: str, step: int, *, today: date | None = None) -> str:
        issued = ((today or _today()) - _EPOCH).days
        body = json.dumps([_VERSION, tenant, campaign_id, str(lead_id), int(step), issued], separators=(",", ":"))
        payload = _b64(body.encode("utf-8"))
        return f"{payload}.{self._sign(payload)}"

    def read(self, token: str, *, today: date | None = None) -> Unsubscribe:
        if not token.isascii() or len(token) > 1024:
            raise TokenError("is not an unsubscribe token")
        payload, dot, signature = token.partition(".")
        if not dot or not payload or not signature:
            raise TokenError("is not an unsubscribe token")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenError("is not valid (it was changed, or not made here)")
        try:
            version, tenant, campaign_id, lead_id, step, issued = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            raise TokenError("is not an unsubscribe token") from None
        if version != _VERSION:
            raise TokenError("was made by another version")
        made = date.fromordinal(_EPOCH.toordinal() + int(issued))
        if ((today or _today()) - made).days > self.max_age_days:
            raise TokenError(f"has expired (made on {made.isoformat()}, valid {self.max_age_days} days)")
        return Unsubscribe(tenant, campaign_id, str(lead_id), int(step), made)

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self._secret, payload.encode("ascii"), hashlib.sha256).digest()[:16]
        return _b64(mac)


_keys: dict[str, bytes] = {}


def secret_for(settings: Settings) -> bytes:
    """The configured secret, or the data directory's own key (made on first use, read once)."""
    if settings.unsubscribe_secret is not None:
        return settings.unsubscribe_secret.get_secret_value().encode("utf-8")
    path = Path(settings.home) / "unsubscribe.key"
    found = _keys.get(str(path))
    if found is None:
        found = _keys[str(path)] = _data_dir_key(path)
    return found


def _data_dir_key(path: Path) -> bytes:
    """The key in ``path``, made once: written whole under a temporary name, made durable, then linked
    into place (a link never replaces a file), so no process ever reads half a key."""
    for _ in range(50):
        key = _read_key(path)
        if key is not None:
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                pass  # another process made it first: read theirs
        finally:
            os.unlink(temp)
    raise ConfigurationError(f"setting unsubscribe_secret: the key file {path} is not a 64-digit hex key; "
                             "remove it, or set AGENT_UNSUBSCRIBE_SECRET")


def _read_key(path: Path) -> bytes | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        text = ""
    if len(text) != 64:
        raise ConfigurationError(f"setting unsubscribe_secret: the key file {path} is not a 64-digit hex key; "
                                 "remove it, or set AGENT_UNSUBSCRIBE_SECRET")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigurationError(f"setting unsubscribe_secret: the key file {path} is not hex") from None


def tokens_for(settings: Settings) -> UnsubscribeToken:
    return UnsubscribeToken(secret_for(settings), max_age_days=settings.unsubscribe_token_days)


def unsubscribe_url(settings: Settings, tenant: str, campaign_id: str, lead_id: str, step: int) -> str | None:
    """The https one-click URL for this message, or None when no ``unsubscribe_base_url`` is set."""
    base = settings.unsubscribe_base_url
    if not base:
        return None
    token = tokens_for(settings).make(tenant, campaign_id, lead_id, step)
    return f"{base.rstrip('/')}/u/{quote(token, safe='.-_')}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _today() -> date:
    return datetime.now(timezone.utc).date()


def apply_unsubscribe(db: Any, request: Unsubscribe, *, source: str) -> tuple[str | None, bool]:
    """Suppress the address the token's message went to; ``(address, newly)``.  Idempotent.

    The address is the one the outbox ledger recorded for that (tenant, campaign, lead, step), else the
    lead's own.  Suppressing also withdraws the lead's drafts still waiting for approval.
    """
    from sqlalchemy import select

    from agent.delivery.keys import idempotency_key
    from agent.delivery.suppression import SuppressionList
    from agent.drafts import DraftStore
    from agent.sequences import EnrolmentStore
    from agent.storage.models import Contact, OutboxMessage

    key = idempotency_key(request.tenant, request.campaign_id, request.lead_id, request.step)
    with db.connect() as conn:
        address = conn.execute(select(OutboxMessage.to_address).where(OutboxMessage.idempotency_key == key)).scalar()
        if address is None and request.lead_id.isdigit():
            address = conn.execute(select(Contact.email).where(Contact.tenant_id == request.tenant,
                                                               Contact.id == int(request.lead_id))).scalar()
    if address is None:
        return None, False
    newly = SuppressionList(db, tenant=request.tenant).add(
        address, reason="unsubscribed", source=source,
        evidence=f"campaign {request.campaign_id} step {request.step}")
    DraftStore(db, tenant=request.tenant).withdraw(address=address, lead_id=request.lead_id, by="unsubscribe",
                                                   reason="the recipient unsubscribed")
    # Every queued step of theirs stops: no follow-up goes to someone who objected.
    EnrolmentStore(db, tenant=request.tenant).stop(
        reason="unsubscribed", address=address, lead_id=request.lead_id,
        ensure=(request.campaign_id, request.lead_id, address, request.step))
    return address, newly
