"""Instants as the stores keep them: always in UTC.

SQLite keeps datetimes as naive text (written in UTC), PostgreSQL as aware
values; every store compares instants, so every value and every ``now`` goes
through ``as_utc`` first.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["as_utc", "aware", "utc_clock"]


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def aware(value: datetime | None) -> datetime | None:
    """A datetime read back from a store, in UTC (None stays None)."""
    return None if value is None else as_utc(value)


def utc_clock(clock: Callable[[], datetime] | None) -> Callable[[], datetime]:
    """``clock`` (default: the real one) giving UTC instants whatever zone it speaks."""
    if clock is None:
        return lambda: datetime.now(timezone.utc)
    return lambda: as_utc(clock())
