"""The structured ``lead_query`` and the mapping of free text onto it.

``"leads at Acme in Berlin"`` becomes ``company="Acme", location="Berlin"``;
words no rule claims are kept for full-text search.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["LeadQuery", "parse_free_text"]

_TEXT = dict(default=None, max_length=200)


class LeadQuery(BaseModel):
    """Filters are combined with AND; ``text`` is free text (parsed, then full-text)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(**_TEXT, description="Company or person name (fuzzy).")
    company: str | None = Field(**_TEXT, description="Company name (fuzzy).")
    domain: str | None = Field(**_TEXT, description="Company domain, URL or email domain.")
    email: str | None = Field(**_TEXT)
    title: str | None = Field(**_TEXT, description="Job title contains.")
    industry: str | None = Field(**_TEXT)
    location: str | None = Field(**_TEXT, description="Contact or company location contains.")
    company_size: str | None = Field(default=None, max_length=20, pattern=r"^\d+(-\d+|\+)?$",
                                     description='Company size band, exactly as stored: "11-50", "1001-5000".')
    text: str | None = Field(**_TEXT, description='Free text, e.g. "CTOs at Acme in Berlin".')
    limit: int = Field(default=25, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    after_id: int | None = Field(
        default=None, ge=0, description="Keyset paging: the leads after this lead id, in id order; each page "
                                        "reads only what follows (``next_after_id`` of the page before). "
                                        "Not with name or company, whose order is their fuzzy score.")
    min_score: float | None = Field(default=None, ge=0, le=100, description="Fuzzy match cut-off.")
    search: Literal["auto", "lexical", "semantic", "hybrid"] = Field(
        default="auto", description="How free text is matched: lexical (full text), semantic (embeddings), "
                                    "hybrid (both, fused by reciprocal rank); auto is hybrid for free text "
                                    "without a name, company, domain or email, else lexical.")
    keywords: bool = Field(default=False, description="Free text as ranked keywords (any word, BM25), not "
                                                       "parsed into filters; the lexical half of hybrid search.")
    ids_only: bool = Field(default=False, description="Records carry the lead id (and match) alone: "
                                                      "for a planner that loads the leads later.")

    @field_validator("name", "company", "domain", "email", "title", "industry", "location", "text")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("company_size", mode="before")
    @classmethod
    def _blank_size(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def is_empty(self) -> bool:
        return not any(getattr(self, f) for f in ("name", "company", "domain", "email", "title",
                                                   "industry", "location", "company_size", "text"))

    def uses_semantic(self) -> bool:
        """Whether the semantic strategy takes part: free text, and no exact-identity field that
        embeddings cannot honour (a name, company, domain or email is the lexical search's work)."""
        if self.search == "lexical" or not self.text:
            return False
        if self.search in ("semantic", "hybrid"):
            return True
        if self.name or self.company or self.domain or self.email:
            return False
        # auto: free text that reads as a company ("leads at Acme") is a fuzzy name search, and text
        # whose every word became a filter ("CTOs in Berlin") is served exactly by the filters.
        parsed = parse_free_text(self.text)
        return bool(parsed.get("text")) and not (parsed.get("company") or parsed.get("name"))

    def with_place(self) -> LeadQuery:
        """This query with the place its free text names ("... in Berlin") as its location filter,
        unless it has one: a hybrid search's halves both take a place literally."""
        if self.location or not self.text:
            return self
        place = parse_free_text(self.text).get("location")
        return self.model_copy(update={"location": place}) if place else self

    def uses_lexical(self) -> bool:
        return self.search != "semantic"


# Title words recognised in free text (singular, lower case).
TITLE_WORDS = ("ceo", "cto", "cfo", "coo", "cmo", "cio", "vp", "head", "director", "manager",
               "founder", "engineer", "executive", "owner", "president", "partner")
INDUSTRY_WORDS = ("software", "saas", "fintech", "healthcare", "manufacturing", "logistics", "retail",
                  "energy", "education", "cybersecurity", "media", "real estate", "biotech",
                  "insurance", "telecom", "robotics", "financial services")
FILLER = frozenset("""find show list get me all the a an any some who whose that leads lead contacts contact
people persons person companies company working work works employees based located startups
startup firms firm businesses""".split())

_STOP = r"(?=\s+(?:in|at|from|with|for|who|working|based|located)\b|[,;.]|$)"
_COMPANY = re.compile(r"\b(?:at|from|with|for)\s+(?P<v>[^,;.]+?)" + _STOP, re.IGNORECASE)
_LOCATION = re.compile(r"\b(?:in|based in|located in|near)\s+(?P<v>[^,;.]+?)" + _STOP, re.IGNORECASE)
_TITLE = re.compile(
    r"\b(?P<v>(?:vp|head|director|chief \w+ officer)\s+of\s+\w+|"
    + "|".join(TITLE_WORDS) + r")s?\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[\w'-]+", re.UNICODE)


def _industry_of(value: str) -> str | None:
    low = value.lower().removesuffix(" companies").removesuffix(" company").removesuffix(" firms")
    low = low.removesuffix(" startups").strip()
    return low if low in INDUSTRY_WORDS else None


def parse_free_text(text: str) -> dict[str, Any]:
    """Map free text to filters; unclaimed words go to ``text`` (or vanish if filler)."""
    found: dict[str, Any] = {}
    rest = f" {text.strip()} "

    match = _LOCATION.search(rest)
    if match:
        words = match.group("v").split()
        if len(words) > 3:
            # "in Berlin hiring sales people": keep the place, leave the rest as text.
            capitalised = [w for w in words[: next((i for i, w in enumerate(words) if not w[:1].isupper()),
                                                   len(words))]]
            words = capitalised or words[:1]
        found["location"] = " ".join(words)
        end = match.start("v") + len(found["location"])
        rest = rest[: match.start()] + " " + rest[end:]
    match = _COMPANY.search(rest)
    if match:
        value = match.group("v").strip()
        industry = _industry_of(value)
        if industry:
            found["industry"] = industry
        else:
            found["company"] = re.sub(r"^(?:the)\s+", "", value, flags=re.IGNORECASE)
        rest = rest[: match.start()] + " " + rest[match.end():]
    match = _TITLE.search(rest)
    if match:
        found["title"] = match.group("v").strip()
        rest = rest[: match.start()] + " " + rest[match.end():]
    if "industry" not in found:
        for word in INDUSTRY_WORDS:
            if re.search(rf"\b{re.escape(word)}\b", rest, re.IGNORECASE):
                found["industry"] = word
                rest = re.sub(rf"\b{re.escape(word)}\b", " ", rest, flags=re.IGNORECASE)
                break
    words = [w for w in _WORD.findall(rest) if w.lower() not in FILLER and w.lower() not in ("in", "at")]
    if words:
        found["text"] = " ".join(words)
    return found
