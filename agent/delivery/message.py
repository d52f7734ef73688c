"""Building outbound messages as RFC 5322 bytes.

The policy is ``email.policy.SMTP`` with lines up to 998 characters, so long
headers such as ``List-Unsubscribe`` are not folded into broken values.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache

from agent.errors import InvalidInput

__all__ = ["is_one_line", "build_message", "new_message_id", "sender_domain", "SMTP_POLICY"]



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
) -> bytes:
    """The message as bytes: headers, body, and a footer with address and opt-out.

    ``send_id`` goes into ``X-Send-Id`` so a bounce can be matched to the send.
    """
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = _sender_header("From", sender)
    msg["To"] = Address(addr_spec=to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime.now(timezone.utc))
    msg["Message-ID"] = message_id
    msg["List-Unsubscribe"] = _sender_header("List-Unsubscribe", sender)
    msg["X-Send-Id"] = send_id
    footer = (
        f"\n\n--\n{postal_address}\n"
        f"To stop receiving these emails, reply with \"unsubscribe\" or write to unsubscribe@{sender_domain(sender)}."
    )
    msg.set_content(body.rstrip() + footer)
    return msg.as_bytes()


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
