"""Company facts from the lead store, for a batch of leads of one tenant.

``read_lead_facts(db, tenant, lead_ids)`` reads, in two queries per 500
leads, each lead's own row with its company, and the titles of everyone the
tenant knows at those companies.  Rows of other tenants are never read: both
queries filter on the tenant, the company join included.

``fact_fields(facts)`` turns one lead's facts into enrichment fields, each
with the row it came from.  Seniority and department come from job titles by
simple keyword rules (``seniority``, ``department``); a title that says
nothing has neither.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, func, select

from agent.storage.db import Database
from agent.storage.models import Company, Contact

__all__ = ["read_lead_facts", "fact_fields", "seniority", "department", "is_senior", "LeadFacts",
           "CompanyFacts", "SENIORITY_LEVELS", "SENIOR_LEVELS", "DEPARTMENTS"]

SENIORITY_LEVELS = ("c_level", "vp", "head", "director", "manager", "individual")
SENIOR_LEVELS = frozenset({"c_level", "vp", "head", "director"})
# Checked in this order: the first department whose words a title has is its department.
_DEPARTMENT_WORDS: tuple[tuple[str, frozenset[str]], ...] = (
    ("sales", frozenset({"sales", "account", "accounts", "bdr", "sdr", "revenue", "cro", "commercial"})),
    ("marketing", frozenset({"marketing", "cmo", "growth", "brand", "content", "communications"})),
    ("engineering", frozenset({"engineering", "engineer", "developer", "cto", "technology", "technical", "it",
                               "software", "devops", "data", "security", "ciso", "cio", "architect"})),
    ("product", frozenset({"product", "cpo", "design", "designer", "ux"})),
    ("operations", frozenset({"operations", "coo", "procurement", "purchasing", "supply", "logistics"})),
    ("finance", frozenset({"finance", "financial", "cfo", "accounting", "accountant", "controller"})),
    ("people", frozenset({"people", "hr", "talent", "recruiting", "recruiter", "chro"})),
    ("executive", frozenset({"ceo", "founder", "cofounder", "owner", "president", "chairman", "chairwoman"})),
)
DEPARTMENTS = (*(name for name, _ in _DEPARTMENT_WORDS), "other")
_C_LEVEL = frozenset({"ceo", "cto", "cfo", "coo", "cmo", "cio", "ciso", "cro", "cpo", "cdo", "cso", "chro", "cco",
                      "chief", "founder", "cofounder", "owner", "president"})
_VP = frozenset({"vp", "svp", "evp", "avp"})
_JUNIOR = frozenset({"assistant", "intern", "trainee"})  # "Assistant to the CEO" is not the CEO
_WORD = re.compile(r"[a-z0-9]+")
_CHUNK = 500  # ids per statement: well under every driver's bound-parameter limit


def _words(title: str) -> list[str]:
    return _WORD.findall(title.lower().replace("co-founder", "cofounder"))


def seniority(title: str | None) -> str | None:
    """The level a job title states: one of ``SENIORITY_LEVELS``, or None without a title."""
    words = _words(title or "")
    if not words:
        return None
    text = " ".join(words)
    if _JUNIOR.intersection(words):
        return "individual"
    if _VP.intersection(words) or "vice president" in text:
        return "vp"
    if _C_LEVEL.intersection(words) or "managing director" in text:
        return "c_level"
    for level, word in (("head", "head"), ("director", "director"), ("manager", "manager"),
                        ("manager", "supervisor")):
        if word in words:
            return level
    return "individual"


def department(title: str | None) -> str | None:
    """The function a job title names (one of ``DEPARTMENTS``), or None without a title."""
    words = _words(title or "")
    if not words:
        return None
    text = " ".join(words)
    if "human resources" in text:
        return "people"
    if "business development" in text:
        return "sales"
    for name, keywords in _DEPARTMENT_WORDS:
        if keywords.intersection(words):
            return name
    return "executive" if "managing director" in text or "chief executive" in text else "other"


def is_senior(title: str | None) -> bool | None:
    """Whether a title is head level or above; None without a title."""
    level = seniority(title)
    return None if level is None else level in SENIOR_LEVELS


@dataclass(frozen=True)
class CompanyFacts:
    """A company of the tenant and what its known contacts' titles say."""

    company_id: int
    name: str | None
    domain: str | None
    industry: str | None
    size: str | None
    location: str | None
    contacts: int = 0
    seniority: dict[str, int] = field(default_factory=dict)
    departments: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LeadFacts:
    """One lead of the tenant: its title, and its company (None if it has none)."""

    lead_id: int
    title: str | None
    company: CompanyFacts | None


_LEADS = (
    select(Contact.id, Contact.title, Company.id.label("company_id"), Company.name, Company.domain, Company.industry,
           Company.size, Company.location)
    .select_from(Contact)
    # The tenant on both sides: a company row of another tenant is never joined in.
    .outerjoin(Company, and_(Company.id == Contact.company_id, Company.tenant_id == Contact.tenant_id))
    .where(Contact.tenant_id == bindparam("tenant"))
    .where(Contact.id.in_(bindparam("ids", expanding=True)))
)
_TITLES = (
    select(Contact.company_id, Contact.title, func.count().label("n"))
    .where(Contact.tenant_id == bindparam("tenant"))
    .where(Contact.company_id.in_(bindparam("ids", expanding=True)))
    .group_by(Contact.company_id, Contact.title)
)


def _ordered(counts: Counter[str], order: Iterable[str]) -> dict[str, int]:
    return {key: counts[key] for key in order if counts[key]}


def read_lead_facts(db: Database, tenant: str, lead_ids: Iterable[int]) -> dict[int, LeadFacts]:
    """Facts for the leads of ``tenant`` among ``lead_ids``; ids of another tenant are not found."""
    wanted = list(dict.fromkeys(lead_ids))
    rows: list[Any] = []
    titles: dict[int, Counter[str | None]] = {}
    with db.connect() as conn:
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            rows.extend(conn.execute(_LEADS, {"tenant": tenant, "ids": chunk}).mappings().all())
        company_ids = sorted({r["company_id"] for r in rows if r["company_id"] is not None})
        for start in range(0, len(company_ids), _CHUNK):
            chunk = company_ids[start:start + _CHUNK]
            for company_id, title, n in conn.execute(_TITLES, {"tenant": tenant, "ids": chunk}):
                titles.setdefault(company_id, Counter())[title] += n
    companies: dict[int, CompanyFacts] = {}
    for row in rows:
        company_id = row["company_id"]
        if company_id is None or company_id in companies:
            continue
        counts = titles.get(company_id, Counter())
        levels: Counter[str] = Counter()
        functions: Counter[str] = Counter()
        for title, n in counts.items():
            level, function = seniority(title), department(title)
            if level is not None:
                levels[level] += n
            if function is not None:
                functions[function] += n
        companies[company_id] = CompanyFacts(
            company_id=company_id, name=row["name"], domain=row["domain"], industry=row["industry"],
            size=row["size"], location=row["location"], contacts=sum(counts.values()),
            seniority=_ordered(levels, SENIORITY_LEVELS), departments=_ordered(functions, DEPARTMENTS))
    return {row["id"]: LeadFacts(lead_id=row["id"], title=row["title"],
                                 company=companies.get(row["company_id"])) for row in rows}


def fact_fields(facts: LeadFacts) -> list[tuple[str, Any, str]]:
    """``(field, value, source_id)`` for each fact known about one lead; unknown facts are left out."""
    out: list[tuple[str, Any, str]] = []
    level = seniority(facts.title)
    if level is not None:
        lead_row = f"contacts/{facts.lead_id}"
        out += [("seniority", level, lead_row), ("department", department(facts.title), lead_row),
                ("is_senior", level in SENIOR_LEVELS, lead_row)]
    company = facts.company
    if company is None:
        return out
    company_row = f"companies/{company.company_id}"
    for name, value in (("company_domain", company.domain), ("company_industry", company.industry),
                        ("company_size", company.size), ("company_location", company.location)):
        if value is not None:
            out.append((name, value, company_row))
    people = f"{company_row}/contacts"
    out += [("company_contacts", company.contacts, people), ("company_seniority", dict(company.seniority), people),
            ("company_departments", dict(company.departments), people),
            ("company_senior_contacts", sum(n for lvl, n in company.seniority.items() if lvl in SENIOR_LEVELS),
             people)]
    return out
