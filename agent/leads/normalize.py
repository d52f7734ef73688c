"""Normalisation of the identities leads are matched on: emails, domains, names.

Company identity: the registrable domain is the strongest key; the
normalised name ("ACME Holdings, Inc." == "Acme Holdings GmbH") comes next.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from urllib.parse import urlsplit

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

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
_HOSTNAME = re.compile(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+")
# RFC 5322 dot-atom of plain ASCII: the shape of nearly every real local part.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_SIMPLE_LOCAL = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")


def clean_text(value: object) -> str | None:
    """Strip and collapse whitespace; empty becomes None."""
    if value is None:
        return None
    text = value.strip() if type(value) is str else str(value).strip()
    if "  " in text or "\t" in text or "\n" in text or "\r" in text:
        text = " ".join(text.split())
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
    if not text.isascii():  # an internationalised name: compare in its punycode form
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if not _HOSTNAME.fullmatch(text):
        return None
    return _psl().privatesuffix(text)


try:  # the domain half of email-validator's checks: half the cost of a whole address
    from email_validator.syntax import validate_email_domain_name as _validate_domain
except ImportError:  # pragma: no cover - an email-validator without it
    _validate_domain = None


# Plain lower-case LDH host names with an alphabetic TLD: no IDNA, nothing for the
# library's Unicode checks to find.  "--" (IDNA and reserved labels) stays with the library.
_PLAIN_DOMAIN = re.compile(r"(?=[a-z0-9.-]{4,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")


def _plain_domain(domain: str) -> bool:
    if "--" in domain or not _PLAIN_DOMAIN.match(domain):
        return False
    # The library's own list of special-use names (RFC 6761 and friends), such as "invalid".
    return not any(domain == d or domain.endswith("." + d) for d in SPECIAL_USE_DOMAIN_NAMES)


@lru_cache(maxsize=65536)
def _checked_domain(domain: str) -> str | EmailNotValidError:
    """email-validator's verdict on a domain, once per domain.

    A plain lower-case ASCII host name skips the library's Unicode machinery,
    which costs ~30 µs a domain and can only agree; a test compares both paths.
    """
    lowered = domain.lower()
    if _plain_domain(lowered):
        return lowered
    try:
        if _validate_domain is not None:
            return _validate_domain(domain, test_environment=False, globally_deliverable=True)["domain"]
        return validate_email(f"x@{domain}", check_deliverability=False).domain
    except EmailNotValidError as exc:
        return exc


def normalize_email(value: str, *, field: str = "email") -> str:
    """A syntactically valid address, lower-cased; ``InvalidInput`` otherwise.

    Plain ASCII dot-atom local parts take a fast path (the domain is still
    judged by email-validator, cached per domain); anything else goes through
    email-validator whole.  Deliverability (DNS) is not checked: imports must
    work offline.
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "is required")
    text = value.strip()
    local, at, domain = text.rpartition("@")
    if at and text.isascii() and len(local) <= 64 and _SIMPLE_LOCAL.match(local):
        checked = _checked_domain(domain)
        if isinstance(checked, str) and len(local) + 1 + len(checked) <= 254:
            return f"{local}@{checked}".lower()
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(field, f"not a valid email address ({exc})") from None
    return result.normalized.lower()
