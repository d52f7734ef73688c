"""Text helpers for the inbound rules: safe header reads, body text, quoted text, return dates, opt-out phrases.

Everything here is pure and defensive: a helper given a broken message or
odd text answers ``""``, ``()`` or ``None``; it does not raise on the inputs
a mail server delivers.  Sizes are capped so a hostile message costs little.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import date, timedelta
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

__all__ = [
    "DAEMONS", "addresses", "body_text", "field_blocks", "header", "html_to_text", "iter_parts", "leaf_text",
    "message_date", "message_ids", "opt_out_phrase", "parse_blocks", "part_text", "return_date",
    "strip_subject_prefixes", "text_addresses", "unquoted_top",
]

MAX_HEADER = 16_384  # characters of one header value that the rules look at
MAX_TEXT = 200_000  # characters of body text that the rules look at
MAX_PARTS = 200
MAX_DEPTH = 12
MAX_IDS = 100


# -- headers ----------------------------------------------------------------------------------------
def header(message: Message, name: str) -> str:
    """The first ``name`` header as one line of text; ``""`` when missing or unreadable.

    A value longer than ``MAX_HEADER`` is cut raw, before the policy would spend time parsing all of it.
    """
    try:
        wanted = name.lower()
        raw = next((v for k, v in message.raw_items() if k.lower() == wanted), None)
    except Exception:  # noqa: BLE001 - not a message at all
        return ""
    if raw is None:
        return ""
    text = str(raw)
    if len(text) <= MAX_HEADER:
        try:
            value = message.get(name)
            text = "" if value is None else str(value)
        except Exception:  # noqa: BLE001 - a header the policy cannot parse: keep its raw text
            pass
    return " ".join(text[:MAX_HEADER].split())


def addresses(value: str) -> list[str]:
    """The lower-cased addr-specs in a header value (``From``, ``To``, ``Original-Rcpt-To``)."""
    try:
        pairs = getaddresses([value[:MAX_HEADER]])
    except Exception:  # noqa: BLE001
        return []
    return [addr.strip().strip("<>").lower() for _, addr in pairs if "@" in addr]


_ID = re.compile(r"<([^<>\s]{1,500})>")


def message_ids(*values: str) -> tuple[str, ...]:
    """Angle-bracketed ids from header values, in order, de-duplicated (at most ``MAX_IDS``)."""
    found: list[str] = []
    for value in values:
        ids = [f"<{m}>" for m in _ID.findall(value)]
        if not ids:  # a client that forgot the brackets
            ids = [f"<{token.strip('<>,;')}>" for token in value.split() if "@" in token][:1]
        found.extend(i for i in ids if i not in found)
        if len(found) >= MAX_IDS:
            break
    return tuple(found[:MAX_IDS])


def message_date(message: Message) -> date | None:
    """The calendar date of the ``Date`` header, in the sender's own time zone."""
    try:
        return parsedate_to_datetime(header(message, "Date")).date()
    except Exception:  # noqa: BLE001 - missing or garbage Date
        return None


_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|antw|fwd?|wg|tr|réf)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def strip_subject_prefixes(subject: str) -> str:
    return _PREFIX.sub("", subject).strip()


# -- parts and text ---------------------------------------------------------------------------------
def iter_parts(message: Message, _depth: int = 0) -> Iterator[Message]:
    """The leaf parts of a message; ``message/*`` parts are leaves (attached mail is not entered)."""
    payload = message.get_payload() if message.get_content_maintype() == "multipart" else None
    if not isinstance(payload, list) or _depth >= MAX_DEPTH:
        yield message
        return
    for part in payload[:MAX_PARTS]:
        if isinstance(part, Message):
            yield from iter_parts(part, _depth + 1)


def part_text(part: Message) -> str:
    """A leaf part's text, decoded by its charset (unknown charsets read as UTF-8, bad bytes replaced)."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw[:MAX_TEXT] if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset() or "utf-8"
        return payload[:MAX_TEXT].decode(charset, errors="replace")
    except (LookupError, TypeError, ValueError):
        return payload[:MAX_TEXT].decode("utf-8", errors="replace")


def body_text(message: Message) -> str:
    """The message's own text: its first inline text/plain part, else its first text/html part as text."""
    plain: str | None = None
    markup: str | None = None
    for part in iter_parts(message):
        try:
            ctype = part.get_content_type()
            if part.get_content_disposition() == "attachment":
                continue
        except Exception:  # noqa: BLE001
            continue
        # A multipart whose boundary never appears is a leaf holding raw text: read it as plain text.
        if plain is None and (ctype == "text/plain" or ctype.startswith("multipart/")):
            plain = part_text(part)
        elif markup is None and ctype == "text/html":
            markup = part_text(part)
    if plain and plain.strip():
        return plain
    return html_to_text(markup) if markup else (plain or "")


_HTML_QUOTE = re.compile(r"<blockquote|class=\"?(?:gmail_quote|moz-cite-prefix)|id=\"?(?:divRplyFwdMsg|appendonsend)",
                         re.IGNORECASE)
_HTML_DROP = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_BREAK = re.compile(r"<br\s*/?>|</(?:p|div|tr|li|h\d)\s*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]{0,2000}>")


def html_to_text(markup: str) -> str:
    """Rough text of an HTML body, cut where the quoted message begins."""
    markup = markup[:MAX_TEXT]
    quote = _HTML_QUOTE.search(markup)
    if quote:
        markup = markup[: markup.rfind("<", 0, quote.start() + 1)]
    markup = _HTML_BREAK.sub("\n", _HTML_DROP.sub(" ", markup))
    return html.unescape(_HTML_TAG.sub(" ", markup))


# Where the sender's own words end: an attribution line, a forwarded/original header block, a signature.
_QUOTE_START = re.compile(
    r"^[ \t]*(?:"
    r"(?:On|Am|Le)\b[^\n]{0,300}(?:\n[^\n]{0,300})?\b(?:wrote|schrieb|a écrit)[ \t]*:"
    r"|-{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht|Message d'origine|Forwarded message"
    r"|Weitergeleitete Nachricht)"
    r"|_{8,}[ \t]*$"
    r"|(?:From|Von|De)[ \t]*:[^\n]*\n[ \t]*(?:Sent|Date|Gesendet|Datum|Envoyé)[ \t]*:"
    r"|--[ \t]?$"
    r")",
    re.IGNORECASE | re.MULTILINE,
)


def unquoted_top(text: str) -> str:
    """The text above the quoted message, without ``>`` lines."""
    text = text[:MAX_TEXT].replace("\r\n", "\n").replace("\r", "\n")
    cut = _QUOTE_START.search(text)
    if cut:
        text = text[: cut.start()]
    return "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(">"))


# -- reports ---------------------------------------------------------------------------------------
DAEMONS = {"mailer-daemon", "mailer_daemon", "mailerdaemon", "mail-daemon", "postmaster"}


def field_blocks(part: Message) -> list[dict[str, str]]:
    """The header-style blocks of a report part, as {lower-cased field name: unfolded value}."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return parse_blocks(part_text(part))
    blocks: list[dict[str, str]] = []
    for block in payload[:500]:
        if not isinstance(block, Message):
            continue
        fields = {k.lower(): " ".join(str(v).split())[:MAX_HEADER] for k, v in reversed(list(block.raw_items()))}
        blocks.append(fields)
        rest = block.get_payload()  # global-delivery-status parses as one message: its body holds the rest
        if isinstance(rest, str) and rest.strip():
            blocks.extend(parse_blocks(rest))
    return blocks


def parse_blocks(text: str) -> list[dict[str, str]]:
    """Blank-line separated ``Name: value`` blocks (folded lines joined), for reports left unparsed."""
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text[: MAX_TEXT])[:500]:
        fields: dict[str, str] = {}
        for line in re.sub(r"\r?\n[ \t]+", " ", chunk).splitlines():
            name, colon, value = line.partition(":")
            if colon and name.strip() and " " not in name.strip():
                fields.setdefault(name.strip().lower(), " ".join(value.split()))
        if fields:
            blocks.append(fields)
    return blocks


def leaf_text(part: Message) -> str:
    """A part's text; a part the parser read as an attached message gives back its header lines."""
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822-headers parsed as an attached message
        return "\n".join(f"{k}: {v}" for p in payload if isinstance(p, Message) for k, v in p.raw_items())
    return part_text(part)


_TEXT_ADDRESS = re.compile(r"[A-Za-z0-9._%+'=-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,63}")


def text_addresses(text: str) -> list[str]:
    """Addresses written in free text, in order, without daemons; only words holding an "@" are searched."""
    seen: list[str] = []
    for token in [w for w in text[:MAX_TEXT].split() if "@" in w][:2000]:
        match = _TEXT_ADDRESS.search(token)
        if match is None:
            continue
        address = match.group(0).lower().strip(".")
        if address.split("@")[0] not in DAEMONS and address not in seen:
            seen.append(address)
    return seen


# -- return dates -----------------------------------------------------------------------------------
_MONTHS: dict[str, int] = {}
for _number, _names in enumerate((
    "january jan januar janvier", "february feb februar février fevrier", "march mar märz maerz mars",
    "april apr avril", "may mai", "june jun juni juin", "july jul juli juillet", "august aug août aout",
    "september sep sept septembre", "october oct oktober okt octobre", "november nov novembre",
    "december dec dezember dez décembre decembre",
), start=1):
    _MONTHS.update(dict.fromkeys(_names.split(), _number))
_MONTH = "|".join(sorted(map(re.escape, _MONTHS), key=len, reverse=True))
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

_DATE_FORMS = (
    ("iso", re.compile(r"(?<!\d)(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?!\d)")),
    ("dots", re.compile(r"(?<![\d.])(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4}|\d{2})?(?![\d.]*\d)(?!\s*(?:uhr|h)\b)",
                        re.IGNORECASE)),
    ("slash", re.compile(r"(?<![\d/])(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4})(?!\d)")),
    ("day-month", re.compile(rf"(?<!\d)(?P<d>\d{{1,2}})(?:st|nd|rd|th|er|\.)?\s+(?:of\s+)?(?P<mn>{_MONTH})\b\.?"
                             rf"(?:\s*,?\s*(?P<y>\d{{4}})(?!\d))?", re.IGNORECASE)),
    ("month-day", re.compile(rf"\b(?P<mn>{_MONTH})\b\.?\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?(?!\d)"
                             rf"(?:\s*,?\s*(?P<y>\d{{4}})(?!\d))?", re.IGNORECASE)),
    ("weekday", re.compile(rf"\b(?P<wd>{'|'.join(_WEEKDAYS)})\s*,?\s+(?:the\s+)?(?P<d>\d{{1,2}})(?:st|nd|rd|th)\b",
                           re.IGNORECASE)),
)
# Words after which a date is the return date ("back") or the last day away ("until").
_TRIGGER = re.compile(
    r"\b(?P<back>back|return(?:ing|s)?|ab|zurück|wieder|retour|dès)\b"
    r"|\b(?P<until>until|till|til|through|thru|bis|jusqu'(?:au|à)|jusqu’(?:au|à))(?!\w)",
    re.IGNORECASE,
)
_WINDOW = 60  # characters after a trigger word in which its date must start


def return_date(text: str, today: date) -> tuple[date, str] | None:
    """The first date named after "back"/"returning"/"until"/"bis"/..., with which of the two it was.

    A date without a year is the next such date on or after ``today``.
    """
    text = text[:20_000]
    for trigger in _TRIGGER.finditer(text):
        window = text[trigger.end(): trigger.end() + _WINDOW]
        found = _first_date(window, today)
        if found is not None:
            return found, "back" if trigger.group("back") else "until"
    return None


def _first_date(window: str, today: date) -> date | None:
    matches = [(m.start(), form, m) for form, pattern in _DATE_FORMS for m in [pattern.search(window)] if m]
    for _, form, match in sorted(matches, key=lambda item: item[0]):
        resolved = _resolve(form, match, today)
        if resolved is not None:
            return resolved
    return None


def _resolve(form: str, match: re.Match[str], today: date) -> date | None:
    parts = match.groupdict()
    year = int(parts["y"]) if parts.get("y") else None
    if year is not None and year < 100:
        year += 2000
    if form == "weekday":
        return _next_weekday_day(_WEEKDAYS.index(parts["wd"].lower()), int(parts["d"]), today)
    if form == "slash":  # 3/12/2026 is March or December: only read the unambiguous ones
        a, b = int(parts["a"]), int(parts["b"])
        if (a > 12) == (b > 12):
            return None
        day, month = (a, b) if a > 12 else (b, a)
    else:
        day = int(parts["d"])
        month = _MONTHS[parts["mn"].lower()] if parts.get("mn") else int(parts["m"])
    if year is not None:
        return _date(year, month, day)
    for candidate_year in range(today.year, today.year + 9):  # 29 February waits for a leap year
        candidate = _date(candidate_year, month, day)
        if candidate is not None and candidate >= today:
            return candidate
    return None


def _next_weekday_day(weekday: int, day: int, today: date) -> date | None:
    """"Monday 7th": the next date on or after today that is a 7th and a Monday (within two years)."""
    candidate = today
    for _ in range(731):
        if candidate.day == day and candidate.weekday() == weekday:
            return candidate
        candidate += timedelta(days=1)
    return None


def _date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


# -- opt-out phrases --------------------------------------------------------------------------------
_OPT_OUT = re.compile(
    r"\bunsubscribe\s+(?:me|us)\b"
    r"|\bremove\s+(?:me|us)\b"
    r"|\b(?:remove|take|delete|drop)\b[^.!?\n]{0,40}?\b(?:off|from)\s+(?:your|the|this|all)\s+"
    r"(?:(?:mailing|e-?mail|distribution|contact|marketing)\s+)?lists?\b"
    r"|\btake\s+(?:me|us)\s+off\b"
    r"|\bstop\s+(?:e-?mailing|sending|contacting|spamming|messaging|writing\s+to)\s+(?:me|us)\b"
    r"|\b(?:do\s+not|don'?t|please\s+don'?t)\s+(?:e-?mail|contact|write\s+to)\s+(?:me|us)\s+(?:again|any\s*more)\b"
    r"|\bno\s+more\s+e-?mails\b"
    r"|\bopt\s+(?:me|us)\s+out\b"
    r"|\b(?:want|like|wish)\s+to\s+(?:opt[\s-]?out|unsubscribe)\b"
    r"|\bbitte\s+(?:mich\s+)?(?:abmelden|austragen)\b"
    r"|\b(?:melden|tragen)\s+sie\s+mich\b[^.!?\n]{0,40}?\b(?:ab|aus)\b"
    r"|\bkeine\s+(?:weiteren\s+)?(?:e-?mails|mails|nachrichten)\s+mehr\b"
    r"|\bd[ée]sabonnez[\s-]moi\b|\bme\s+d[ée](?:sabonner|sinscrire)\b"
    r"|\bme\s+retirer\s+de\s+(?:votre|la|cette)\s+liste\b|\bne\s+plus\s+recevoir\b",
    re.IGNORECASE,
)
# Words that alone (with only politeness around them) ask to be removed: "Unsubscribe.", "STOP please".
_BARE_KEYWORDS = {"unsubscribe", "unsub", "remove", "stop", "stopp", "optout", "opt-out", "abmelden",
                  "austragen", "désabonner", "desabonner", "désinscrire", "desinscrire", "désabonnement"}
_FILLER = {"please", "pls", "plz", "thanks", "thank", "you", "me", "us", "now", "asap", "bitte", "danke",
           "merci", "svp", "out", "opt", "kindly", "immediately", "sofort"}
_WORD = re.compile(r"[\w'’-]+")


def opt_out_phrase(text: str, *, max_words: int) -> str | None:
    """The phrase in ``text`` that asks to stop the mail, or ``None``.

    An explicit phrase ("please remove me", "stop emailing me") counts anywhere
    in ``text``; the bare word "unsubscribe" counts in a text of at most
    ``max_words`` words; "stop"/"remove" only when nothing but politeness
    surrounds them, so "how do I unsubscribe my team from X" stays a reply.
    """
    explicit = _OPT_OUT.search(text)
    if explicit:
        return " ".join(explicit.group(0).lower().split())[:60]
    words = [w.lower() for w in _WORD.findall(text[:2000])]
    if not words or len(words) > max_words:
        return None
    keywords = [w for w in words if w in _BARE_KEYWORDS or (w == "out" and "opt" in words)]
    if not keywords:
        return None
    if "unsubscribe" in words or all(w in _BARE_KEYWORDS or w in _FILLER for w in words):
        return keywords[0] if keywords[0] != "out" else "opt out"
    return None
