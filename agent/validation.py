"""Turning pydantic validation errors into the project's field paths.

One spelling everywhere: ``records[3].provenance.hash``, ``lead_query.limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

__all__ = ["field_path", "first_error"]


def field_path(loc: Sequence[Any], prefix: str = "") -> str:
    """``("records", 3, "to")`` → ``records[3].to``; ``prefix`` goes in front."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def first_error(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """The first error of ``exc`` as ``(field path, lower-cased reason)``."""
    first = exc.errors(include_url=False)[0]
    return field_path(first["loc"], prefix) or prefix, str(first["msg"]).lower()
