"""Output checks: what every draft, from a template or a model, must pass before it reaches the outbox.

- no unresolved placeholder: Jinja delimiters (``{{ }}``, ``{% %}``, ``{# #}``)
  and the usual hand-written ones (``[First Name]``, ``{first_name}``,
  ``<<name>>``, ``%FIRST_NAME%``);
- the step's length limits: a one-line subject of at most ``subject_chars``, a
  body within ``body_chars`` and ``body_words``;
- the footer the delivery appends (postal address and opt-out), checked on the
  message text as it will be sent (``agent.delivery.message.sent_text``);
- no instruction-like text (``agent.copy.injection``) that the text the draft
  was written from did not have: lead data filled into a template, or a model's
  answer, must not carry instructions on to whatever model reads the message
  (or the reply that quotes it) next;
- for a model's answer, no link or address that the base draft and the lead did
  not already contain (a model must not invent URLs).

Each check raises its own ``CopyRejected`` subclass naming the field
(``template.body``, ``llm.subject``...), so no half-checked draft goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from agent.campaigns.model import CopyLimits
from agent.copy.errors import InventedLink, MissingFooter, PromptInjection, TooLong, UnresolvedPlaceholder
from agent.copy.injection import find_instructions, normalise
from agent.delivery.message import is_one_line, sent_text
from agent.errors import InvalidInput

__all__ = ["check_draft", "check_placeholders", "check_lengths", "check_footer", "check_links",
           "check_instructions", "find_placeholder", "find_links"]

_JINJA = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}")
_BRACE = re.compile(r"\{\s*[A-Za-z_][\w .-]{0,40}?\s*\}")
_ANGLE = re.compile(r"<<\s*[^<>\n]{1,40}?\s*>>")
_PERCENT = re.compile(r"%[A-Za-z][A-Za-z0-9_]{1,40}%")
_BRACKET = re.compile(r"\[\s*([A-Za-z][A-Za-z0-9 _./'-]{0,40}?)\s*\]")
# Words that make "[...]" a slot to fill rather than prose ("[sic]", "[Acme]" are left alone).
_SLOT_WORDS = frozenset({
    "name", "first", "last", "full", "company", "organisation", "organization", "title", "role", "position",
    "insert", "your", "their", "his", "her", "date", "day", "time", "link", "url", "city", "country", "industry",
    "product", "recipient", "sender", "prospect", "contact", "email", "phone", "placeholder", "tbd", "todo",
    "fill", "here", "value", "field", "signature", "website", "number",
})


def find_placeholder(text: str) -> str | None:
    """The first unresolved placeholder in ``text``, or None."""
    for pattern in (_JINJA, _BRACE, _ANGLE, _PERCENT):
        found = pattern.search(text)
        if found is not None:
            return found.group(0)
    for found in _BRACKET.finditer(text):
        inside = found.group(1)
        words = set(re.split(r"[\s_./'-]+", inside.lower()))
        if "_" in inside or (inside.isupper() and len(inside) > 1) or words & _SLOT_WORDS:
            return found.group(0)
    return None


def check_placeholders(text: str, field: str) -> None:
    found = find_placeholder(text)
    if found is not None:
        raise UnresolvedPlaceholder(field, f"contains an unresolved placeholder {_clip(found)!r}")


def check_lengths(subject: str, body: str, limits: CopyLimits, *, fields: tuple[str, str],
                  max_words: int | None = None) -> None:
    """The subject on one line within ``limits.subject_chars``; the body within its characters and
    words (and ``max_words``, a model's own cap, when given).  ``fields`` name the subject and body."""
    subject_field, body_field = fields
    if not is_one_line(subject):
        raise TooLong(subject_field, "must be one line (it contains a line break or a control character)")
    if len(subject) > limits.subject_chars:
        raise TooLong(subject_field, f"is {len(subject)} characters; the limit (limits.subject_chars) is "
                                     f"{limits.subject_chars}")
    if len(body) > limits.body_chars:
        raise TooLong(body_field, f"is {len(body)} characters; the limit (limits.body_chars) is {limits.body_chars}")
    words = len(body.split())
    for cap, what in ((limits.body_words, "limits.body_words"), (max_words, "personalise.max_words")):
        if cap is not None and words > cap:
            raise TooLong(body_field, f"is {words} words; the limit ({what}) is {cap}")


def check_footer(body: str, *, sender: str, postal_address: str,
                 compose: Callable[..., str] = sent_text) -> str:
    """The message text as it will be sent (``compose``: the delivery's own); it must end with a
    footer that carries the postal address and the opt-out.  Returns that text."""
    if not postal_address.strip():
        raise MissingFooter("footer", "the setting postal_address is empty: a message must carry the "
                                      "sender's postal address")
    try:
        text = compose(body, sender=sender, postal_address=postal_address)
    except InvalidInput as exc:
        raise MissingFooter("footer", f"cannot be written ({exc})") from None
    head = body.rstrip()
    tail = text[len(head):] if text.startswith(head) else ""
    if postal_address.strip() not in tail:
        raise MissingFooter("footer", "the message as sent has no postal address after the body")
    if "unsubscribe" not in tail.lower():
        raise MissingFooter("footer", "the message as sent has no opt-out (unsubscribe) after the body")
    return text


# -- links ---------------------------------------------------------------------------------------
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`)\]]+|\bwww\.[^\s<>\"'`)\]]+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_BARE = re.compile(r"(?<![@\w.-])((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))"
                   r"(/[^\s<>\"'`)\]]*)?")
_TRAILING = ".,;:!?'\""
_RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost"})


@lru_cache(maxsize=1)
def _suffixes():  # type: ignore[no-untyped-def]
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList(accept_unknown=False)  # "node.js" or "mr.smith" is not a domain


def _is_domain(host: str, tld: str) -> bool:
    return tld.lower() in _RESERVED_TLDS or _suffixes().publicsuffix(host.lower()) is not None


def _normal_url(url: str) -> str:
    url = url.rstrip(_TRAILING).lower()
    url = re.sub(r"^(?:https?|ftp)://", "", url)
    url = url[4:] if url.startswith("www.") else url
    return url.rstrip("/")


def find_links(text: str) -> set[str]:
    """Links and addresses in ``text``, normalised: ``host/path`` (no scheme, no ``www.``, no
    trailing slash), ``mailto`` addresses as ``user@host``; bare domains only on a real suffix."""
    found = {_normal_url(match.group(0)) for match in _URL.finditer(text)}
    rest = _URL.sub(" ", text)  # what is left is searched for addresses, then bare domains
    found |= {match.group(0).lower() for match in _EMAIL.finditer(rest)}
    rest = _EMAIL.sub(" ", rest)
    for match in _BARE.finditer(rest):
        if _is_domain(match.group(1), match.group(2)):
            found.add(_normal_url(match.group(0)))
    return found


def check_links(text: str, allowed: Iterable[str], field: str) -> None:
    """Every link or address in ``text`` must occur in one of the ``allowed`` texts (the base draft,
    the lead's values).  A bare domain also passes when it is the host of an allowed link or address;
    a path on that host does not (that would be a made-up page)."""
    known: set[str] = set()
    for source in allowed:
        known |= find_links(source)
    hosts = {link.split("@", 1)[1] if "@" in link else link.split("/", 1)[0] for link in known}
    for link in sorted(find_links(text)):
        if link in known or ("/" not in link and "@" not in link and link in hosts):
            continue
        raise InventedLink(field, f"contains {_clip(link)!r}, which neither the template nor the lead contains")


def check_instructions(text: str, field: str, *, already: str = "") -> None:
    """Refuse instruction-like text in a draft (a model's answer, or a template filled with lead
    data) unless the text it was written from (``already``) had it."""
    found = find_instructions(text)
    authored = normalise(already) if found else ""  # most drafts have none: the source is not read
    for phrase in found:
        if phrase not in authored:
            raise PromptInjection(field, f"contains an instruction-like phrase ({_clip(phrase)!r}) that the "
                                         "text it was written from did not; it is not used")


def check_draft(subject: str, body: str, *, limits: CopyLimits, fields: tuple[str, str], sender: str,
                postal_address: str, source: str = "", max_words: int | None = None) -> str:
    """Every check that applies to any draft: instruction-like text that ``source`` (the text the
    draft was written from: the template's, or the base draft for a model's answer) did not have,
    placeholders, lengths, footer.  ``fields`` name where the subject and body came from
    (``template.subject``, ``llm.body``...).  Returns the body as it will be sent."""
    check_instructions(subject, fields[0], already=source)
    check_instructions(body, fields[1], already=source)
    check_placeholders(subject, fields[0])
    check_placeholders(body, fields[1])
    check_lengths(subject, body, limits, fields=fields, max_words=max_words)
    return check_footer(body, sender=sender, postal_address=postal_address)


def _clip(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."
