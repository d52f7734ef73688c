"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1, started and stopped by the test.

It keeps every message it accepted (envelope and exact bytes), counts the
connections it saw, refuses chosen recipients at RCPT with a chosen reply,
and can drop the connection in the middle of DATA (as a crashing relay would).
STARTTLS and AUTH use a throwaway self-signed certificate made with openssl.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["SmtpServer", "Received"]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # address -> reply at RCPT
    drop_data_for: set[str] = field(default_factory=set)  # addresses whose DATA loses the connection
    refuse_data: dict[str, str] = field(default_factory=dict)  # address -> reply to its message body
    # address -> (arrived, release): its DATA is kept, ``arrived`` is set, and the 250 waits for ``release``
    hold_data: dict[str, tuple[threading.Event, threading.Event]] = field(default_factory=dict)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,  # noqa: N802
                          responses: list[str]) -> list[str]:
        with self.lock:
            if not getattr(session, "_counted", False):
                session._counted = True
                self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if set(envelope.rcpt_tos) & self.drop_data_for:
            server.transport.close()  # gone before the 250: the client cannot know the outcome
            return "421 closing"
        for address in envelope.rcpt_tos:
            if address in self.refuse_data:
                return self.refuse_data[address]
            if address in self.hold_data:  # the server commits the message, then is slow to say so
                with self.lock:
                    self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                                  envelope.original_content))
                arrived, release = self.hold_data[address]
                arrived.set()
                await asyncio.to_thread(release.wait, 60)
                return "250 Message accepted"
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SmtpServer:
    """``with SmtpServer() as server:`` a server on a free port of 127.0.0.1."""

    def __init__(self, *, tls: bool = False, users: dict[str, str] | None = None, port: int | None = None) -> None:
        self.handler = _Handler()
        self._dir = Path(tempfile.mkdtemp(prefix="agent-smtp-"))
        self.cert = self._dir / "cert.pem"
        kwargs: dict[str, Any] = {}
        if tls:
            key = self._dir / "key.pem"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                            "-keyout", str(key), "-out", str(self.cert)], check=True, capture_output=True)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert, key)
            kwargs.update(tls_context=context, require_starttls=True)
        if users is not None:
            def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and users.get(data.login.decode()) == data.password.decode()
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=authenticate, auth_require_tls=tls, auth_required=True)
        self.port = port or _free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **kwargs)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.controller.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
