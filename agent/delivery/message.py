"""Building outbound messages as RFC 5322 bytes.

The policy is ``email.policy.SMTP`` with lines up to 998 characters, so long
headers such as ``List-Unsubscribe`` are not folded into broken values.

The email library parses every header it is given, which costs more than the
rest of a send.  Most outreach is plain ASCII with simple addresses, whose
bytes the library would write verbatim; for those ``build_message`` writes the
same bytes itself (tests hold the two paths to byte-for-byte equality), and
everything else (non-ASCII, long lines, quoted addresses, control
characters) goes through the library.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timezone
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from agent.errors import InvalidInput

__all__ = ["is_one_line", "build_message", "new_message_id", "sender_address", "sender_domain", "sent_text", "wire_address",
           "SMTP_POLICY"]



class _CachedHeaderRegistry(HeaderRegistry):
    """The standard header classes, each made once: the stock registry builds a new class with
    ``type()`` for every header it sees, a fifth of the cost of building a message."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


SMTP_POLICY = SMTP.clone(max_line_length=998, header_factory=_CachedHeaderRegistry())


@lru_cache(maxsize=64)
def sender_domain(sender: str) -> str:
    address = parseaddr(sender)[1]
    if "@" not in address:
        raise InvalidInput("sender", f"not an address: {sender!r}")
    return address.rsplit("@", 1)[1].lower()


@lru_cache(maxsize=64)
def sender_address(sender: str) -> str:
    """The bare address of ``sender`` (``"Team <a@b.example>"`` -> ``a@b.example``), as written."""
    return parseaddr(sender)[1]


def new_message_id(sender: str) -> str:
    """A Message-ID on the sender's domain, made once and stored before sending."""
    return make_msgid(domain=sender_domain(sender))


def build_message(
    *,
    sender: str,
    to: str,
    subject: str,
    body: str,
    message_id: str,
    postal_address: str,
    send_id: str,
    date: datetime | None = None,
    unsubscribe_url: str | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
) -> bytes:
    """The message as bytes: headers, body, and a footer with address and opt-out.

    ``send_id`` goes into ``X-Send-Id`` so a bounce can be matched to the send.
    With ``unsubscribe_url`` (https, one-click), ``List-Unsubscribe`` names it
    first and the mailto second, ``List-Unsubscribe-Post`` asks for RFC 8058
    one-click, and the footer shows the link.  A follow-up names the message
    it answers (``In-Reply-To``) and its whole thread (``References``).
    """
    stamp = format_datetime(date or datetime.now(timezone.utc))
    text = sent_text(body, sender=sender, postal_address=postal_address, unsubscribe_url=unsubscribe_url)
    thread = (in_reply_to, " ".join(references or [in_reply_to])) if in_reply_to else None
    if unsubscribe_url is None and thread is None:
        fast = _plain_message(sender, to, subject, text, message_id, send_id, stamp)
        if fast is not None:
            return fast
    return _library_message(sender, to, subject, text, message_id, send_id, stamp, unsubscribe_url, thread)


def sent_text(body: str, *, sender: str, postal_address: str, unsubscribe_url: str | None = None) -> str:
    """The body as it is sent: ``body`` and the footer every message gets (postal address, opt-out).
    The copywriter checks this text before a draft may reach the outbox."""
    return body.rstrip() + _footer(sender, postal_address, unsubscribe_url)


def _footer(sender: str, postal_address: str, unsubscribe_url: str | None = None) -> str:
    link = f"\nUnsubscribe with one click: {unsubscribe_url}" if unsubscribe_url else ""
    return (f"\n\n--\n{postal_address}\n"
            f"To stop receiving these emails, reply with \"unsubscribe\" or write to unsubscribe@{sender_domain(sender)}."
            f"{link}")


def _library_message(sender: str, to: str, subject: str, text: str, message_id: str, send_id: str,
                     stamp: str, unsubscribe_url: str | None = None,
                     thread: tuple[str, str] | None = None) -> bytes:
    """The message as the email library writes it (the reference for ``_plain_message``)."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = _sender_header("From", sender)
    msg["To"] = Address(addr_spec=to)
    msg["Subject"] = subject
    msg["Date"] = stamp
    msg["Message-ID"] = message_id
    if thread is not None:
        msg["In-Reply-To"], msg["References"] = thread
    if unsubscribe_url is None:
        msg["List-Unsubscribe"] = _sender_header("List-Unsubscribe", sender)
    else:
        # https first (RFC 8058), the mailto for clients without one-click.
        msg["List-Unsubscribe"] = f"<{unsubscribe_url}>, <mailto:unsubscribe@{sender_domain(sender)}?subject=unsubscribe>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg["X-Send-Id"] = send_id
    msg.set_content(text)
    return msg.as_bytes()


# What the library would write verbatim: a dot-atom address, single-spaced printable ASCII
# words (no encoded-word look-alike), a bracketed id, and body lines of printable ASCII or tabs.
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
                      r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
_WORDS = re.compile(r"[!-~]+(?: [!-~]+)*")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_MESSAGE_ID = re.compile(f"<{_ATOM}@{_ATOM}>")
_BODY = re.compile(r"[\t\n -~]*")
_LIMIT = 900  # well inside the 998 of a line, the header's name included


def _plain_message(sender: str, to: str, subject: str, text: str, message_id: str, send_id: str,
                   stamp: str) -> bytes | None:
    """The library's bytes, written directly, when every part is one it would pass through as is."""
    if not (_ADDRESS.fullmatch(to) and len(to) <= _LIMIT and _WORDS.fullmatch(subject)
            and len(subject) <= _LIMIT and _MESSAGE_ID.fullmatch(message_id) and _WORDS.fullmatch(send_id)
            and len(send_id) <= _LIMIT and _BODY.fullmatch(text) and not text.endswith("\n")):
        return None
    if "=?" in subject or "=?" in to or "=?" in send_id or "=?" in message_id:
        return None  # the library would read these as RFC 2047 encoded words
    lines = text.split("\n")
    if max(map(len, lines)) > _LIMIT:
        return None
    head = _sender_lines(sender)
    if head is None:
        return None
    return (f"{head[0]}To: {to}\r\nSubject: {subject}\r\nDate: {stamp}\r\nMessage-ID: {message_id}\r\n"
            f"{head[1]}X-Send-Id: {send_id}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n'
            "\r\n" + "".join(line + "\r\n" for line in lines)).encode("ascii")


@lru_cache(maxsize=64)
def _sender_lines(sender: str) -> tuple[str, str] | None:
    """``From`` and ``List-Unsubscribe`` as the library folds them, or None if they are not ASCII."""
    lines = tuple(SMTP_POLICY.fold(name, _sender_header(name, sender)) for name in ("From", "List-Unsubscribe"))
    return lines if all(line.isascii() for line in lines) else None


@lru_cache(maxsize=64)
def _sender_header(name: str, sender: str) -> object:
    """The headers that depend on the sender alone, parsed once (header objects are immutable)."""
    if name == "List-Unsubscribe":
        return SMTP_POLICY.header_factory(name, f"<mailto:unsubscribe@{sender_domain(sender)}?subject=unsubscribe>")
    return SMTP_POLICY.header_factory(name, sender)


def is_one_line(text: str) -> bool:
    """No character that ends a line or is a control: the email library also breaks lines at
    U+2028, U+2029, NEL, VT and FF, and a header must never carry a control character."""
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


@lru_cache(maxsize=65536)
def wire_address(value: str) -> str:
    """The form of ``value`` that goes on the wire: an ASCII address (punycode domain), lower-cased.

    No SMTPUTF8: a non-ASCII local part cannot be put in a To: header.  Raises
    ``ValueError`` saying why an address is refused.  Cached: a batch checks
    each address at the copywriter and again at delivery.
    """
    try:
        result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from None
    return str(result.ascii_email).lower()
