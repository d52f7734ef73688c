"""Logging with redaction: personal data and secrets never reach a log line.

``RedactingFilter`` rewrites every record that passes through it: email
addresses, phone-like numbers, passwords in URLs and ``key=value`` secrets
are masked.  ``configure_logging`` installs it on the root handler; library
users can add the filter to their own handlers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["RedactingFilter", "redact", "configure_logging", "get_logger"]

_RULES: list[tuple[re.Pattern[str], str]] = [
    # scheme://user:password@host → scheme://user:***@host
    (re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE), r"\g<pre>***@"),
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), "Bearer ***"),
    # api_key=..., token: ..., password="..."
    (re.compile(r"(?P<key>\b(?:api[_-]?key|secret|token|password|passwd|authorization)\b\s*[=:]\s*)"
                r"(?!Bearer \*\*\*)(?:\"[^\"]*\"|'[^']*'|[^\s,;]+)", re.IGNORECASE), r"\g<key>***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "sk-***"),
    # local@domain → ***@domain: the domain is useful for debugging, the person is not
    (re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"),
     r"***@\g<domain>"),
    (re.compile(r"(?<![\w.])\+?\d[\d ()-]{7,}\d\b"), "[phone]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Masks personal data and secrets in the formatted message of each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the template, drop the args
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are redacted at the source, whatever handlers run."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def configure_logging(level: str | int = "INFO", **kwargs: Any) -> logging.Handler:
    """Log to stderr through the redacting filter; returns the handler."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler
