"""Enricher agent: lead records in, the same leads with company facts out.

Request: ``{"leads": [lead record, ...]}`` or ``{"lead": record}``; each
record carries its provenance (as lead search and the lead loader return
it).  Each lead comes back with every field it had, plus:

- ``enrichment``: ``{field: value}``, facts from the lead store (the lead's
  seniority, department and whether it is senior; its company's domain,
  industry, size, location; how many contacts the tenant knows there and
  their seniority levels and departments) and, with the website fetcher on
  and the company's domain allowlisted, ``website_title`` and
  ``website_text`` (at most ``WEBSITE_TEXT_CHARS`` characters);
- ``enrichment_provenance``: ``{field: {"source", "source_id", "agent",
  "at"}}`` per field (``leads_db`` with ``companies/<id>`` or
  ``contacts/<id>``, or ``website`` with the URL read and the ``sha256`` of
  the fetched text).

The record's provenance has the lead record's hash as its parent.  Only the
context's tenant is read: a lead the tenant does not have gets no facts and
an ``errors`` item (``lead_not_found``).  A website that cannot be fetched
fails no lead: its fields are left out and ``errors`` says why per lead
(``partial`` is then true).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.enrichment.facts import fact_fields, read_lead_facts
from agent.enrichment.netguard import FetchError
from agent.envelope import PROVENANCE, make_envelope, make_provenance, record_hash, utc_now_iso
from agent.errors import ConfigurationError, EnvelopeError, PayloadError
from agent.storage.db import Database

if TYPE_CHECKING:
    from agent.enrichment.fetcher import FetchResult, WebsiteFetcher
    from agent.settings import Settings

__all__ = ["EnricherAgent", "MAX_LEADS", "WEBSITE_TEXT_CHARS"]

MAX_LEADS = 10_000
WEBSITE_TEXT_CHARS = 2_000
_AGENT = "enricher"


@dataclass(frozen=True, slots=True)
class _Lead:
    path: str  # where the lead is in the request ("leads[3]"), for messages
    lead_id: int
    content: dict[str, Any]  # the record without its provenance and any earlier enrichment
    parent: str  # the record's hash


def _lead(raw: Any, path: str) -> _Lead:
    if not isinstance(raw, Mapping):
        raise PayloadError(path, "must be a lead record (an object)")
    lead_id = raw.get("lead_id")
    if isinstance(lead_id, str) and lead_id.strip().isdigit():
        lead_id = int(lead_id.strip())
    if lead_id is None or lead_id == "":
        raise PayloadError(f"{path}.lead_id", "is required")
    if not isinstance(lead_id, int) or isinstance(lead_id, bool) or lead_id < 1:
        raise PayloadError(f"{path}.lead_id", "must be a positive integer")
    content = {k: v for k, v in raw.items() if k != PROVENANCE}
    try:
        actual = record_hash(content)
    except EnvelopeError as exc:
        raise PayloadError(path, exc.reason) from None
    prov = raw.get(PROVENANCE)
    if isinstance(prov, Mapping) and prov.get("hash") is not None and prov["hash"] != actual:
        raise PayloadError(f"{path}.provenance.hash", "does not match the lead's content")
    # An earlier enrichment is replaced, not merged into.
    content.pop("enrichment", None)
    content.pop("enrichment_provenance", None)
    return _Lead(path, lead_id, content, actual)


def _parse(request: Mapping[str, Any]) -> list[_Lead]:
    if "lead" in request and "leads" in request:
        raise PayloadError("leads", "give either lead or leads, not both")
    if "lead" in request:
        return [_lead(request["lead"], "lead")]
    raw = request.get("leads")
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PayloadError("leads", "must be a non-empty list of lead records")
    if len(raw) > MAX_LEADS:
        raise PayloadError("leads", f"at most {MAX_LEADS} leads per request, not {len(raw)}")
    return [_lead(item, f"leads[{index}]") for index, item in enumerate(raw)]


def _site_url(domain: str) -> str:
    return f"https://{domain}/"


def _add_website(enrichment: dict[str, Any], where: dict[str, dict[str, Any]], result: FetchResult,
                 fetched_at: str) -> None:
    origin = {"source": "website", "source_id": result.url, "agent": _AGENT, "at": fetched_at,
              "sha256": result.sha256}
    if result.title:
        enrichment["website_title"] = result.title
        where["website_title"] = dict(origin)
    enrichment["website_text"] = result.text[:WEBSITE_TEXT_CHARS]
    where["website_text"] = dict(origin)


class EnricherAgent(BaseAgent):
    """Adds company facts from the lead store (and, when enabled, the company website) to leads."""

    description: ClassVar[str | None] = "Company facts from the lead store and allowlisted company websites"
    capabilities: ClassVar[frozenset[str]] = frozenset({"read"})
    source = "enricher"

    def __init__(self, db: Database | None = None, *, fetcher: WebsiteFetcher | None = None,
                 site_url: Callable[[str], str] = _site_url, fetch_concurrency: int = 4) -> None:
        """``fetcher`` replaces the one built from settings (the ``enrich_fetch`` setting still
        decides whether websites are read at all); ``site_url`` maps a company domain to the page read."""
        self._db = db
        self._fetcher = fetcher
        self.site_url = site_url
        self.fetch_concurrency = max(1, fetch_concurrency)
        self._fetchers: dict[tuple[Any, ...], WebsiteFetcher] = {}
        self._lock = threading.Lock()

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        leads = _parse(request)
        db = self._db or Database.for_settings(context.settings)
        facts = read_lead_facts(db, context.tenant, [lead.lead_id for lead in leads])
        read_at = utc_now_iso()
        fetch_on = bool(context.settings.enrich_fetch)
        sites: dict[int, str] = {}  # lead id -> the allowlisted domain whose site it gets
        pages: dict[str, Any] = {}
        if fetch_on:
            fetcher = self.fetcher_for(context.settings)
            for lead_id, found in facts.items():
                domain = found.company.domain if found.company else None
                if domain and fetcher.allows(domain):
                    sites[lead_id] = domain
            pages = self._fetch_all(fetcher, sorted(set(sites.values())))
        errors: list[dict[str, Any]] = []
        records = []
        for lead in leads:
            enrichment: dict[str, Any] = {}
            where: dict[str, dict[str, Any]] = {}
            found = facts.get(lead.lead_id)
            if found is None:
                errors.append({"item": lead.lead_id, "code": "lead_not_found",
                               "message": f"{lead.path}: lead {lead.lead_id} is not in this tenant's lead store"})
            else:
                for name, value, source_id in fact_fields(found):
                    enrichment[name] = value
                    where[name] = {"source": "leads_db", "source_id": source_id, "agent": _AGENT, "at": read_at}
            page = pages.get(sites.get(lead.lead_id, ""))
            if isinstance(page, FetchError):
                errors.append({"item": lead.lead_id, **page.to_dict()})
            elif page is not None:
                _add_website(enrichment, where, *page)
            record = {**lead.content, "enrichment": enrichment, "enrichment_provenance": where}
            record[PROVENANCE] = make_provenance(
                record, source=self.source, source_id=f"contacts/{lead.lead_id}", agent=_AGENT,
                run_id=context.run_id, node=context.node, parents=[lead.parent])
            records.append(record)
        website: dict[str, Any] = {"enabled": fetch_on}
        if fetch_on:
            failed = sum(1 for page in pages.values() if isinstance(page, FetchError))
            website.update(domains=len(pages), fetched=len(pages) - failed, failed=failed,
                           skipped_leads=sum(1 for lead in leads if lead.lead_id not in sites))
        return make_envelope(
            records, source=self.source, run_id=context.run_id, flow=context.flow, node=context.node,
            agent=_AGENT, partial=bool(errors), errors=errors, duration_ms=context.elapsed_ms(),
            requested=len(leads), not_found=sum(1 for lead in leads if lead.lead_id not in facts),
            website_fetch=fetch_on, website=website,
        )

    def fetcher_for(self, settings: Settings) -> WebsiteFetcher:
        """The injected fetcher, else one built from ``settings`` (kept per configuration)."""
        if self._fetcher is not None:
            return self._fetcher
        key = (settings.enrich_fetch_allowlist, settings.enrich_fetch_timeout, settings.enrich_fetch_max_bytes)
        with self._lock:
            found = self._fetchers.get(key)
            if found is None:
                try:
                    from agent.enrichment.fetcher import WebsiteFetcher
                except ImportError as exc:
                    raise ConfigurationError(f"setting enrich_fetch: the website fetcher cannot load ({exc}); "
                                             "pip install httpx2") from None
                found = self._fetchers[key] = WebsiteFetcher.from_settings(settings, max_chars=WEBSITE_TEXT_CHARS)
            return found

    def _fetch_all(self, fetcher: WebsiteFetcher, domains: list[str]) -> dict[str, Any]:
        """Each domain's page once: ``(FetchResult, fetched_at)``, or the ``FetchError`` it failed with."""
        def one(domain: str) -> tuple[FetchResult, str] | FetchError:
            try:
                result = fetcher.fetch(self.site_url(domain))
            except FetchError as exc:
                return exc
            return result, utc_now_iso()

        if not domains:
            return {}
        if len(domains) == 1 or self.fetch_concurrency == 1:
            return {domain: one(domain) for domain in domains}
        with ThreadPoolExecutor(max_workers=min(self.fetch_concurrency, len(domains)),
                                thread_name_prefix="enricher-fetch") as pool:
            return dict(zip(domains, pool.map(one, domains)))
