"""Normalisation of the identities leads are matched on: emails, domains, names.

Company identity: the registrable domain is the strongest key; the
normalised name ("ACME Holdings, Inc." == "Acme Holdings GmbH") comes next.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from urllib.parse import urlsplit

from email_validator import EmailNotValidError, validate_email

from agent.errors import InvalidInput

__all__ = [
    "normalize_email",
    "normalize_company_name",
    "registrable_domain",
    "clean_text",
    "clean_person_name",
]

# Legal-form words dropped when comparing company names.
LEGAL_FORMS = frozenset(
    """inc incorporated corp corporation co company llc llp lp ltd limited gmbh mbh ag kg
    ohg ug sa sas sarl sl srl spa bv nv plc pty pte oy ab as aps asa kk se""".split()
)
_PUNCT = re.compile(r"[^\w\s&]+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def clean_text(value: object) -> str | None:
    """Strip and collapse whitespace; empty becomes None."""
    if value is None:
        return None
    text = _SPACE.sub(" ", str(value)).strip()
    return text or None


def clean_person_name(value: object) -> str | None:
    """Collapse whitespace and fix ALL-CAPS / all-lower names ("JANE" → "Jane")."""
    text = clean_text(value)
    if text and (text.isupper() or text.islower()):
        text = " ".join(part[:1].upper() + part[1:].lower() for part in text.split(" "))
    return text


@lru_cache(maxsize=65536)
def normalize_company_name(name: str) -> str:
    """Lower-case, accents and punctuation removed, legal forms dropped."""
    text = unicodedata.normalize("NFKD", name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = _PUNCT.sub(" ", text.replace("&", " & "))
    words = [w for w in text.split() if w not in LEGAL_FORMS]
    if not words:  # a name made only of legal words: keep it rather than erase it
        words = text.split()
    return " ".join(words)


@lru_cache(maxsize=1)
def _psl():  # type: ignore[no-untyped-def]
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList()


@lru_cache(maxsize=65536)
def registrable_domain(value: str) -> str | None:
    """The registrable domain (eTLD+1) of a domain, URL or email address.

    Uses the bundled Public Suffix List, whose default rule also covers
    reserved test TLDs (``acme.example`` stays ``acme.example``).
    """
    text = value.strip().lower()
    if not text:
        return None
    if "@" in text:
        text = text.rsplit("@", 1)[1]
    if "//" in text or "/" in text:
        text = urlsplit(text if "//" in text else f"//{text}").hostname or ""
    text = text.strip(".").removeprefix("www.")
    try:
        text = text.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", text):
        return None
    return _psl().privatesuffix(text)


def normalize_email(value: str, *, field: str = "email") -> str:
    """A syntactically valid address, lower-cased; ``InvalidInput`` otherwise.

    Deliverability (DNS) is not checked: imports must work offline.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "is required")
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(field, f"not a valid email address ({exc})") from None
    return result.normalized.lower()
