"""Bringing inbound mail in: files (``.eml``, mbox), an IMAP mailbox; then processing what is pending.

Every source stores the raw bytes first (``InboundStore``) and only then
lets go of the message (an IMAP message is flagged ``\\Seen`` after it is
stored), so a crash in between fetches it again, stored once.  Processing
runs the ``ReplyOrchestrator`` on each pending message; a message it cannot
process keeps its error and stays pending for the next run, and the loop goes
on: nothing stops the inbound loop, and nothing already stored is lost.
"""

from __future__ import annotations

import imaplib
import mailbox
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError, InvalidInput
from agent.inbound.store import MAX_BYTES, InboundStore
from agent.logs import get_logger
from agent.settings import Settings

__all__ = ["IntakeReport", "import_paths", "poll_imap", "process_pending"]

log = get_logger("agent.inbound")


@dataclass
class IntakeReport:
    stored: int = 0
    duplicates: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    def to_dict(self) -> dict[str, Any]:
        return {"stored": self.stored, "duplicates": self.duplicates,
                "refused": [{"where": w, "why": y} for w, y in self.refused]}


def _keep(store: InboundStore, raw: bytes, source: str, where: str, report: IntakeReport) -> bool:
    try:
        _, new = store.store(raw, source=source)
    except InvalidInput as exc:
        report.refused.append((where, exc.reason))
        return False
    if new:
        report.stored += 1
    else:
        report.duplicates += 1
    return True


def import_paths(store: InboundStore, paths: list[Path]) -> IntakeReport:
    """``.eml`` files (one message each) and mbox files (many), stored raw."""
    report = IntakeReport()
    for path in paths:
        try:
            if path.stat().st_size > MAX_BYTES and path.suffix.lower() == ".eml":
                report.refused.append((str(path), f"is over the {MAX_BYTES:,} bytes kept"))
                continue
            if path.suffix.lower() in (".mbox", ".mbx") or _looks_like_mbox(path):
                box = mailbox.mbox(str(path), create=False)
                try:
                    for key in box.keys():
                        _keep(store, box.get_bytes(key), "mbox", f"{path}#{key}", report)
                finally:
                    box.close()
            else:
                _keep(store, path.read_bytes(), "eml", str(path), report)
        except OSError as exc:
            report.refused.append((str(path), exc.strerror or type(exc).__name__))
    return report


def _looks_like_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def poll_imap(store: InboundStore, settings: Settings, *, limit: int = 200) -> IntakeReport:
    """Unseen messages of the configured IMAP mailbox, stored, then flagged seen."""
    if not settings.imap_host:
        raise InvalidInput("imap_host", "no IMAP server is configured (AGENT_IMAP_HOST)")
    report = IntakeReport()
    cls = imaplib.IMAP4_SSL if settings.imap_ssl else imaplib.IMAP4
    client = cls(settings.imap_host, settings.imap_port, timeout=settings.imap_timeout)
    try:
        password = settings.imap_password.get_secret_value() if settings.imap_password else ""
        client.login(settings.imap_username or "", password)
        client.select(settings.imap_folder)
        _, data = client.uid("SEARCH", None, "UNSEEN")
        for uid in (data[0] or b"").split()[:limit]:
            _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple) and len(p) > 1), None)
            if raw is None:
                report.refused.append((f"imap uid {uid.decode()}", "the server sent no body"))
                continue
            if _keep(store, raw, "imap", f"imap uid {uid.decode()}", report):
                client.uid("STORE", uid, "+FLAGS", r"(\Seen)")  # only once it is kept
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return report


def process_pending(orchestrator: Any, store: InboundStore, *, limit: int = 100) -> dict[str, int]:
    """Run ``orchestrator`` (a ReplyOrchestrator) on each pending message; counts by kind, and errors."""
    counts: dict[str, int] = {}
    for message in store.pending(limit=limit):
        try:
            envelope = orchestrator.run({"inbound_id": message.id})
            kind = envelope["records"][0]["kind"]
        except AgentError as exc:
            # Kept pending with its error: the next run tries it again (a locked database, a model
            # down), so an opt-out is never lost to a passing failure.
            store.failed(message.id, f"{exc.code}: {exc}"[:500])
            log.warning("inbound message %s not processed: %s", message.id, exc.code)
            kind = "error"
        counts[kind] = counts.get(kind, 0) + 1
    return counts
