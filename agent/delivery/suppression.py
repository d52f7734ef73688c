"""Suppression list: addresses and domains never to be contacted again, per tenant."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from agent.errors import InvalidInput
from agent.leads.normalize import normalize_email, registrable_domain
from agent.storage.db import Database
from agent.storage.models import Suppression

__all__ = ["SuppressionList"]


class SuppressionList:
    """Permanent, per-tenant suppression by normalised address or by ``@domain``."""

    def __init__(self, db: Database, *, tenant: str = "default") -> None:
        self.db = db
        self.tenant = tenant

    @staticmethod
    def _key(address: str) -> str:
        if address.startswith("@"):
            domain = registrable_domain(address[1:])
            if domain is None:
                raise InvalidInput("address", f"not a domain: {address!r}")
            return f"@{domain}"
        return normalize_email(address, field="address")

    def add(self, address: str, *, reason: str, source: str, evidence: str | None = None) -> bool:
        """Suppress ``address`` (or ``@domain``); True if it was not suppressed before."""
        key = self._key(address)
        if not reason or not source:
            raise InvalidInput("reason" if not reason else "source", "is required")
        try:
            with self.db.session() as session:
                session.add(Suppression(tenant_id=self.tenant, address=key, reason=reason,
                                        source=source, evidence=evidence))
        except Exception as exc:  # the unique key makes a repeat a no-op
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    def suppressed(self, addresses: Iterable[str]) -> dict[str, str]:
        """address → reason for those of ``addresses`` that are suppressed.

        Keys are the strings exactly as given, so a caller can look up what it
        passed in: ``Bob@X.example`` is found when ``bob@x.example`` (or
        ``@x.example``) is suppressed.  Each address is normalised for the
        lookup the same way ``add`` normalises what it stores.
        """
        wanted: dict[str, list[str]] = {}
        for address in dict.fromkeys(addresses):
            email = self._lookup_key(address)
            wanted.setdefault(email, []).append(address)
            domain = registrable_domain(email)
            if domain:
                wanted.setdefault(f"@{domain}", []).append(address)
        if not wanted:
            return {}
        stmt = select(Suppression.address, Suppression.reason).where(
            Suppression.tenant_id == self.tenant, Suppression.address.in_(list(wanted)))
        out: dict[str, str] = {}
        with self.db.session() as session:
            for key, reason in session.execute(stmt):
                for address in wanted[key]:
                    out.setdefault(address, reason)
        return out

    @staticmethod
    def _lookup_key(address: str) -> str:
        # A malformed address cannot be on the list by address, but its domain still can.
        try:
            return normalize_email(address, field="address")
        except InvalidInput:
            return address.strip().lower()
