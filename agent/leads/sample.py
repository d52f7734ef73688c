"""Deterministic generator of fictional companies and contacts.

Every domain is under the reserved ``.example`` TLD (RFC 2606), every phone
number in the 555-01xx range kept for fiction, and people are random pairings
of common given and family names.  The same ``seed`` and ``size`` always give
the same rows, so tests and benchmarks can rely on them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.storage.db import Database

__all__ = ["generate_leads", "load_sample_data", "ACME_COMPANIES"]

# Fixed companies the quick start and the tests look for.
ACME_COMPANIES: list[dict[str, str]] = [
    {"company": "Acme Corp", "domain": "acme.example", "industry": "Manufacturing", "location": "Berlin"},
    {"company": "ACME Holdings, Inc.", "domain": "acme-holdings.example", "industry": "Financial Services", "location": "New York"},
    {"company": "Acme Robotics GmbH", "domain": "acme-robotics.example", "industry": "Robotics", "location": "Munich"},
    {"company": "Acme Analytics Ltd", "domain": "acmeanalytics.example", "industry": "Software", "location": "London"},
]

FIRST = """Ada Alan Alice Amara Anna Ben Bruno Carla Chen Chloe Daniel Diego Elena Emil Emma Farah
Felix Grace Hana Hugo Ines Ivan Jonas Julia Kai Karin Lara Leo Lina Lucas Maya Mia Nadia Noah Nora
Olga Omar Paul Priya Rafael Rosa Sami Sara Sofia Tariq Theo Uma Vera Wen Yara Yusuf Zoe""".split()
LAST = """Abbott Becker Brandt Castro Costa Dalton Diaz Ellis Engel Fischer Flores Garcia Hale Hartmann
Ito Jensen Kaur Keller Klein Larsen Lopez Meyer Moreau Nakamura Novak Okafor Olsen Patel Perez Quinn
Reyes Richter Rossi Sato Schmidt Silva Sousa Tanaka Torres Vogel Wagner Weber Wolf Young Zimmer""".split()
TITLES = [
    "CEO", "CTO", "CFO", "COO", "VP of Sales", "Head of Sales", "Sales Director", "Account Executive",
    "Head of Marketing", "Marketing Manager", "VP of Engineering", "Engineering Manager",
    "Head of Operations", "Procurement Manager", "Head of People", "Founder", "Product Manager",
]
INDUSTRIES = [
    "Software", "Fintech", "Healthcare", "Manufacturing", "Logistics", "Retail", "Energy",
    "Education", "Cybersecurity", "Media", "Real Estate", "Biotech", "Insurance", "Telecom",
]
CITIES = [
    "Berlin", "Munich", "Hamburg", "London", "Manchester", "Paris", "Lyon", "Amsterdam", "Madrid",
    "Barcelona", "Milan", "Stockholm", "Copenhagen", "Vienna", "Zurich", "Dublin", "Warsaw",
    "Lisbon", "New York", "Austin", "Toronto", "Singapore",
]
SIZES = ["1-10", "11-50", "51-200", "201-500", "501-1000", "1001-5000"]
LEGAL = ["", "", "Inc.", "Ltd", "GmbH", "LLC", "AG", "BV", "SAS", "Group"]
ONSET = "b br c cr d f g gr h k l m n p pr r s st t tr v z".split()
VOWEL = "a e i o u ai ea io".split()
CODA = ["", "", "n", "r", "s", "x", "l", "nt"]


def _syllables(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(ONSET) + rng.choice(VOWEL) + rng.choice(CODA) for _ in range(count))


def _companies(rng: random.Random, count: int) -> Iterator[dict[str, str]]:
    yield from ACME_COMPANIES
    seen = {c["domain"] for c in ACME_COMPANIES}
    made = len(ACME_COMPANIES)
    while made < count:
        stem = _syllables(rng, rng.choice((2, 2, 3)))
        # Keep generated names clear of the fixed Acme companies.
        if "acm" in stem or "acne" in stem:
            continue
        domain = f"{stem}.example"
        if domain in seen:
            continue
        seen.add(domain)
        made += 1
        legal = rng.choice(LEGAL)
        yield {
            "company": f"{stem.capitalize()} {legal}".strip(),
            "domain": domain,
            "industry": rng.choice(INDUSTRIES),
            "location": rng.choice(CITIES),
            "size": rng.choice(SIZES),
        }


def generate_leads(size: int = 2000, *, seed: int = 7) -> list[dict[str, Any]]:
    """``size`` fictional leads as import rows (the CSV columns)."""
    rng = random.Random(seed)
    n_companies = max(len(ACME_COMPANIES), size // 5)
    companies = list(_companies(rng, n_companies))
    rows: list[dict[str, Any]] = []
    emails: set[str] = set()
    for index in range(size):
        # The first leads go to the Acme companies so small samples still have them.
        company = companies[index % len(companies)] if index < 4 * len(ACME_COMPANIES) else rng.choice(companies)
        first, last = rng.choice(FIRST), rng.choice(LAST)
        local = f"{first}.{last}".lower()
        email = f"{local}@{company['domain']}"
        n = 2
        while email in emails:
            email = f"{local}{n}@{company['domain']}"
            n += 1
        emails.add(email)
        rows.append(
            {
                "email": email,
                "first_name": first,
                "last_name": last,
                "title": rng.choice(TITLES),
                "phone": f"+1 555 01{rng.randrange(100):02d}",
                "location": company["location"] if rng.random() < 0.7 else rng.choice(CITIES),
                "company": company["company"],
                "domain": company["domain"],
                "industry": company["industry"],
                "size": company.get("size", "201-500"),
                "company_location": company["location"],
                "source": "sample",
                "lawful_basis": "legitimate_interest",
                "consent_source": "generated sample data",
            }
        )
    return rows


def load_sample_data(db: Database, *, size: int = 2000, tenant: str = "default") -> int:
    """Load the sample leads into an empty store; returns rows inserted."""
    from agent.leads.store import LeadStore
    from agent.storage.models import Contact

    if db.count(Contact, tenant_id=tenant):
        return 0
    report = LeadStore(db, tenant=tenant).upsert_rows(generate_leads(size), source_name="sample")
    return report.inserted
