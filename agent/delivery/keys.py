"""Idempotency keys for side effects: one per (tenant, campaign, lead, step)."""

from __future__ import annotations

import hashlib

__all__ = ["idempotency_key"]


def idempotency_key(tenant: str, campaign_id: str, lead_id: str, step: int) -> str:
    """A stable sha256 hex key; the same inputs always give the same key."""
    raw = "\x1f".join((tenant, campaign_id, str(lead_id), str(step)))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()
