"""A/B variants: which arm of a step's test a lead gets, decided once and kept.

``pick_variant`` is deterministic: sha256 of (campaign, lead, step) gives a
point in [0, 1), and the variants' weights cut that interval into arms, so the
same lead always draws the same arm under the same weights.  ``VariantStore``
keeps the draw in the ``variant_assignments`` table: the first writer wins
(an insert that does nothing on conflict, then a read), so a lead keeps its
variant when weights change later, and concurrent workers agree.  A variant
retired with weight 0 stays with the leads that have it; no new lead gets it.

``VariantStore.counts(campaign_id)`` reports how many leads each variant of
each step has (for the CLI and reports).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agent.campaigns.model import TemplateVariant
from agent.errors import StorageError
from agent.storage.db import Database, upsert_insert
from agent.storage.models import VariantAssignmentRow, utcnow

__all__ = ["pick_variant", "VariantStore", "variant_counts"]

_TABLE = VariantAssignmentRow.__table__


def pick_variant(variants: Sequence[TemplateVariant], *, campaign_id: str, lead_id: str, step: int) -> str:
    """The id of the variant that (campaign, lead, step) draws under these weights (weight 0: never)."""
    live = [v for v in variants if v.weight > 0]
    if not live:
        raise ValueError("no variant has a weight above 0")
    digest = hashlib.sha256(f"{campaign_id}\x1f{lead_id}\x1f{step}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in live)
    edge = 0.0
    for variant in live:
        edge += variant.weight
        if point < edge:
            return variant.id
    return live[-1].id  # the sum's rounding can leave the point just past the last edge


class VariantStore:
    """The ``variant_assignments`` table of ``db``: one row per (tenant, campaign, lead, step)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.db.migrate()
        self._insert: Any = upsert_insert(db.dialect)

    def get(self, *, tenant: str, campaign_id: str, lead_id: str, step: int) -> str | None:
        """The variant kept for this lead and step, if one was assigned."""
        with self.db.connect() as conn:
            return conn.execute(select(_TABLE.c.variant_id).where(*_key(tenant, campaign_id, lead_id, step))
                                ).scalar_one_or_none()

    def assign(self, *, tenant: str, campaign_id: str, lead_id: str, step: int, variant_id: str,
               template_id: str | None = None) -> tuple[str, bool]:
        """Keep ``variant_id`` for this lead and step unless one is kept already: ``(the kept variant,
        whether this call wrote it)``."""
        row = {"tenant_id": tenant, "campaign_id": campaign_id, "lead_id": str(lead_id), "step": step,
               "variant_id": variant_id, "template_id": template_id, "created_at": utcnow()}
        if self._insert is None:  # another database: insert, and a conflict means someone was first
            try:
                with self.db.connect(write=True) as conn:
                    conn.execute(_TABLE.insert().values(row))
                return variant_id, True
            except StorageError as exc:
                if not isinstance(exc.__cause__, IntegrityError):
                    raise
        else:
            # RETURNING, not rowcount: a driver may report -1 rows for an insert that did nothing.
            with self.db.connect(write=True) as conn:
                written = conn.execute(self._insert(_TABLE).values(row).on_conflict_do_nothing(
                    index_elements=["tenant_id", "campaign_id", "lead_id", "step"]).returning(_TABLE.c.id)).first()
            if written is not None:
                return variant_id, True
        kept = self.get(tenant=tenant, campaign_id=campaign_id, lead_id=lead_id, step=step)
        if kept is None:  # pragma: no cover - the conflicting row vanished in between
            raise StorageError(f"variant assignment of lead {lead_id} step {step} conflicted but cannot be read")
        return kept, False

    def counts(self, campaign_id: str, *, tenant: str = "default") -> list[dict[str, Any]]:
        """Leads per variant of each step of a campaign: ``[{"step", "variant_id", "leads"}]``, in order."""
        query = (select(_TABLE.c.step, _TABLE.c.variant_id, func.count().label("leads"))
                 .where(_TABLE.c.tenant_id == tenant, _TABLE.c.campaign_id == campaign_id)
                 .group_by(_TABLE.c.step, _TABLE.c.variant_id)
                 .order_by(_TABLE.c.step, _TABLE.c.variant_id))
        with self.db.connect() as conn:
            return [{"step": int(r.step), "variant_id": r.variant_id, "leads": int(r.leads)}
                    for r in conn.execute(query)]


def variant_counts(db: Database, campaign_id: str, *, tenant: str = "default") -> list[dict[str, Any]]:
    """``VariantStore(db).counts(campaign_id, tenant=...)``."""
    return VariantStore(db).counts(campaign_id, tenant=tenant)


def _key(tenant: str, campaign_id: str, lead_id: str, step: int) -> tuple[Any, ...]:
    return (_TABLE.c.tenant_id == tenant, _TABLE.c.campaign_id == campaign_id,
            _TABLE.c.lead_id == str(lead_id), _TABLE.c.step == step)
