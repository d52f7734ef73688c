"""Lead enrichment: company facts from the lead store, and (off by default) website text.

``facts`` reads the store in bulk for a batch of leads; ``fetcher`` reads an
allowlisted company website defensively (``netguard`` decides what it may
reach).  The fetcher needs ``httpx2``: its names load on first use, so this
package imports without it.
"""

from __future__ import annotations

from typing import Any

from agent.enrichment.facts import (
    DEPARTMENTS,
    SENIOR_LEVELS,
    SENIORITY_LEVELS,
    CompanyFacts,
    LeadFacts,
    department,
    fact_fields,
    is_senior,
    read_lead_facts,
    seniority,
)
from agent.enrichment.netguard import Allowlist, FetchError, FetchRefused, address_refusal

__all__ = [
    # facts
    "read_lead_facts", "fact_fields", "seniority", "department", "is_senior", "LeadFacts", "CompanyFacts",
    "SENIORITY_LEVELS", "SENIOR_LEVELS", "DEPARTMENTS",
    # website
    "WebsiteFetcher", "FetchResult", "visible_text", "Allowlist", "FetchError", "FetchRefused", "address_refusal",
]

_LAZY = {"WebsiteFetcher", "FetchResult", "visible_text"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from agent.enrichment import fetcher

        return getattr(fetcher, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
