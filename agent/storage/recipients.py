"""Naming one recipient in a query: the tables that say who a message is for share these columns."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func

__all__ = ["recipient_matches"]


def recipient_matches(model: Any, address: str | None, lead_id: str | None) -> list[Any]:
    """Conditions on ``model`` (a table with ``to_address`` and ``lead_id``) naming one recipient: the
    address in any case, or the lead; empty when neither is given (OR them together)."""
    matches = []
    if address:
        matches.append(func.lower(model.to_address) == address.strip().lower())
    if lead_id is not None:
        matches.append(model.lead_id == str(lead_id))
    return matches
