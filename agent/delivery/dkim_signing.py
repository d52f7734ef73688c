"""Optional DKIM signing (RFC 6376) of outgoing messages, with dkimpy.

Set ``AGENT_DKIM_DOMAIN``, ``AGENT_DKIM_SELECTOR`` and
``AGENT_DKIM_PRIVATE_KEY_FILE`` (a PEM RSA or Ed25519 key whose public half
is published at ``<selector>._domainkey.<domain>``); the SMTP channel then
prepends a ``DKIM-Signature`` to every message it sends, signing the headers
receivers look at, the one-click unsubscribe headers included (RFC 8058 asks
for them to be covered).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from agent.errors import ConfigurationError
from agent.settings import Settings

__all__ = ["Signer", "signer_for"]

SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
                  b"list-unsubscribe-post", b"mime-version", b"content-type")


class Signer:
    def __init__(self, domain: str, selector: str, private_key: bytes) -> None:
        try:
            import dkim
        except ImportError:
            raise ConfigurationError("setting dkim_domain: DKIM signing needs dkimpy (pip install dkimpy)") from None
        self._dkim = dkim
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")
        self.private_key = private_key

    def sign(self, message: bytes) -> bytes:
        present = {line.split(b":", 1)[0].strip().lower()
                   for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if b":" in line[:80]}
        headers = [h for h in SIGNED_HEADERS if h in present]
        signature = self._dkim.sign(message, self.selector, self.domain, self.private_key, include_headers=headers)
        return signature + message


@lru_cache(maxsize=8)
def _load(domain: str, selector: str, key_file: str) -> Signer:
    try:
        key = Path(key_file).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"setting dkim_private_key_file: cannot read it ({exc.strerror})") from None
    return Signer(domain, selector, key)


def signer_for(settings: Settings) -> Signer | None:
    """The configured signer, or None when DKIM is off (no domain set)."""
    if not settings.dkim_domain:
        return None
    if not settings.dkim_selector or not settings.dkim_private_key_file:
        raise ConfigurationError("setting dkim_selector / dkim_private_key_file: DKIM needs both with dkim_domain")
    return _load(settings.dkim_domain, settings.dkim_selector, settings.dkim_private_key_file)
