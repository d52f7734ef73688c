"""One lead row: validation and normalisation shared by CSV import and sample data.

``clean_lead_row`` turns a raw mapping (CSV columns) into the normalised row
the store writes, or raises ``InvalidInput`` naming the first bad field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from agent.errors import InvalidInput
from agent.leads.normalize import (
    clean_person_name,
    clean_text,
    normalize_company_name,
    normalize_email,
    registrable_domain,
)

__all__ = ["clean_lead_row", "LEAD_FIELDS", "COLUMN_ALIASES", "LAWFUL_BASES", "FREEMAIL_DOMAINS"]

LEAD_FIELDS = (
    "email", "first_name", "last_name", "title", "phone", "location", "company", "domain",
    "industry", "size", "company_location", "status", "lead_score", "source", "lawful_basis",
    "consent_source",
)

# Header spellings seen in CRM exports, mapped to our field names.
COLUMN_ALIASES: dict[str, str] = {
    "e-mail": "email", "email address": "email", "email_address": "email", "work email": "email",
    "first": "first_name", "firstname": "first_name", "given name": "first_name",
    "last": "last_name", "lastname": "last_name", "surname": "last_name", "family name": "last_name",
    "job title": "title", "job_title": "title", "position": "title", "role": "title",
    "company name": "company", "company_name": "company", "organization": "company", "account": "company",
    "website": "domain", "company domain": "domain", "company_domain": "domain", "url": "domain",
    "city": "location", "phone number": "phone", "telephone": "phone",
    "company size": "size", "employees": "size", "headcount": "size", "score": "lead_score",
}

# GDPR Art. 6(1) bases, as stored per lead.
LAWFUL_BASES = frozenset(
    {"consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interest"}
)
# Mailbox providers whose domain says nothing about the person's company.
FREEMAIL_DOMAINS = frozenset(
    {"gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "live.com",
     "icloud.com", "me.com", "aol.com", "gmx.de", "gmx.net", "web.de", "proton.me",
     "protonmail.com", "mail.com", "yandex.ru"}
)
MAX_LEN = {"first_name": 128, "last_name": 128, "title": 255, "phone": 64, "location": 128,
           "company": 255, "industry": 128, "size": 32, "company_location": 128, "status": 32,
           "source": 128, "consent_source": 255}
TEXT_FIELDS = ("title", "phone", "location", "company", "industry", "size", "company_location",
               "source", "consent_source")
# Fields cleaned one value at a time (see _clean_field), in the order errors are found.
CLEANED_FIELDS = ("first_name", "last_name", *TEXT_FIELDS, "status", "lawful_basis")
_PHONE = re.compile(r"^\+?[0-9 ()\-./]{4,40}(?:\s*(?:x|ext\.?)\s*[0-9]{1,6})?$", re.IGNORECASE)


def canonical_column(header: str) -> str:
    key = " ".join(header.strip().lower().replace("_", " ").split())
    if key.replace(" ", "_") in LEAD_FIELDS:
        return key.replace(" ", "_")
    return COLUMN_ALIASES.get(key, COLUMN_ALIASES.get(key.replace(" ", "_"), key))


@lru_cache(maxsize=65536)
def _clean_field(field: str, value: Any) -> Any:
    """One field's cleaned value, or ``InvalidInput``; cached, as titles, cities and
    industries repeat across rows far more often than they differ."""
    if field in ("first_name", "last_name"):
        text = clean_person_name(value)
    else:
        text = clean_text(value)
    if text is None:
        return None
    if len(text) > MAX_LEN.get(field, 255):
        raise InvalidInput(field, f"longer than {MAX_LEN.get(field, 255)} characters")
    if field == "phone" and not _PHONE.match(text):
        raise InvalidInput("phone", "not a phone number")
    if field == "status":
        return text.lower()
    if field == "lawful_basis":
        basis = text.lower().replace(" ", "_").replace("-", "_")
        if basis not in LAWFUL_BASES:
            raise InvalidInput("lawful_basis", f"must be one of {', '.join(sorted(LAWFUL_BASES))}")
        return basis
    return text


def clean_lead_row(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise one row; ``InvalidInput`` names the bad field."""
    get = raw.get
    row: dict[str, Any] = {"email": normalize_email(get("email") or "", field="email")}
    for field in CLEANED_FIELDS:
        value = get(field)
        if value is None or value == "":
            row[field] = None
        else:
            row[field] = _clean_field(field, value if type(value) is str else str(value))
    score = clean_text(raw.get("lead_score"))
    if score is None:
        row["lead_score"] = None
    else:
        try:
            row["lead_score"] = float(score)
        except ValueError:
            raise InvalidInput("lead_score", "not a number") from None
        if not 0 <= row["lead_score"] <= 100:
            raise InvalidInput("lead_score", "must be between 0 and 100")

    domain_text = clean_text(raw.get("domain"))
    if domain_text is not None:
        domain = registrable_domain(domain_text)
        if domain is None:
            raise InvalidInput("domain", f"not a domain name: {domain_text!r}")
    else:
        # Cached per domain, not per address.
        email_domain = registrable_domain(row["email"].rpartition("@")[2])
        domain = None if email_domain in FREEMAIL_DOMAINS else email_domain
    row["domain"] = domain
    if row["company"] is None and domain is not None:
        row["company"] = domain.split(".", 1)[0].replace("-", " ").title()
    row["normalized_company"] = normalize_company_name(row["company"]) if row["company"] else None
    if row["normalized_company"] is not None and len(row["normalized_company"]) > MAX_LEN["company"]:
        raise InvalidInput("company", f"longer than {MAX_LEN['company']} characters once normalised")
    return row
