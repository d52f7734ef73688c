"""Bringing inbound mail in: files (``.eml``, mbox), an IMAP mailbox; then processing what is pending.

Every source stores the raw bytes first (``InboundStore``) and only then
lets go of the message (an IMAP folder's read cursor moves past a message
only once it is stored), so a crash in between fetches it again, stored
once.  Processing runs the ``ReplyOrchestrator`` on each pending message; a
message it cannot process keeps its error and stays pending for the next
run, and the loop goes on: nothing stops the inbound loop, and nothing
already stored is lost.
"""

from __future__ import annotations

import hashlib
import imaplib
import mailbox
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from agent.errors import AgentError, InvalidInput
from agent.inbound.store import MAX_BYTES, InboundStore
from agent.logs import get_logger
from agent.settings import Settings
from agent.storage.db import upsert_insert
from agent.storage.models import ImapCursorRow, utcnow

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
    """The configured IMAP folder's messages not read yet, stored; up to ``limit`` per call.

    A read cursor per folder (RFC 4549): the folder's UIDVALIDITY and the
    highest UID already handled, in ``imap_cursors``.  Each poll fetches the
    UIDs above it in ascending order, whatever their flags, so a message a
    person opened in a mail client before the poll is read all the same.  The
    folder is opened read-only and fetched with ``BODY.PEEK[]``: the user's
    mailbox is left as it is (nothing is flagged ``\\Seen``).  A changed
    UIDVALIDITY (or no cursor yet) reads the whole folder again; the store
    keeps each message once, so what was read before counts as a duplicate.

    The cursor moves over the contiguous run of UIDs handled: stored, or
    refused for good (too big; expunged before its fetch) and named in
    ``refused``.  It is saved once, when the batch ends or stops on an error (a
    database or connection failure, a failed FETCH), which then propagates:
    the next poll starts at the message that failed.
    """
    if not settings.imap_host:
        raise InvalidInput("imap_host", "no IMAP server is configured (AGENT_IMAP_HOST)")
    report = IntakeReport()
    key = _mailbox_key(settings)
    cls = imaplib.IMAP4_SSL if settings.imap_ssl else imaplib.IMAP4
    client = cls(settings.imap_host, settings.imap_port, timeout=settings.imap_timeout)
    try:
        password = settings.imap_password.get_secret_value() if settings.imap_password else ""
        client.login(settings.imap_username or "", password)
        uidvalidity = _examine(client, settings.imap_folder)
        cursor = _load_cursor(store, key)
        start = cursor[1] if cursor is not None and cursor[0] == uidvalidity else 0
        last = start
        try:
            for uid in _uids_after(client, start)[:limit]:
                where = f"imap uid {uid}"
                typ, parts = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
                if typ != "OK":  # the server may send it next time: stop here, the cursor short of it
                    raise imaplib.IMAP4.error(f"UID FETCH {uid} failed: {parts[0]!r}")
                raw = next((p[1] for p in parts if isinstance(p, tuple) and len(p) > 1), None)
                if raw is None:  # an OK without the message: expunged since the search, gone for good
                    report.refused.append((where, "the server sent no body"))
                else:
                    _keep(store, raw, "imap", where, report)  # False: refused for good, named in report
                last = uid
        finally:
            if cursor != (uidvalidity, last):
                _save_cursor(store, key, uidvalidity, last)
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return report


def _mailbox_key(settings: Settings) -> str:
    """``user@host:port/folder``, the cursor's key; hashed at the end when over the column's 400 characters."""
    host = (settings.imap_host or "").lower()
    key = f"{settings.imap_username or ''}@{host}:{settings.imap_port}/{settings.imap_folder}"
    if len(key) <= 400:
        return key
    return key[:335] + "#" + hashlib.sha256(key.encode()).hexdigest()


def _examine(client: imaplib.IMAP4, folder: str) -> int:
    """Open ``folder`` read-only; its UIDVALIDITY."""
    typ, data = client.select(folder, readonly=True)
    if typ != "OK":
        raise imaplib.IMAP4.error(f"cannot open IMAP folder {folder!r}: {data[0]!r}")
    _, value = client.response("UIDVALIDITY")
    try:
        return int(value[-1])
    except (TypeError, ValueError):
        # Without it UIDs are not known to persist, so a cursor could skip mail (RFC 3501 2.3.1.1).
        raise imaplib.IMAP4.error(f"the IMAP server sent no UIDVALIDITY for {folder!r}") from None


def _uids_after(client: imaplib.IMAP4, last_uid: int) -> list[int]:
    """The folder's UIDs above ``last_uid``, ascending (every UID when it is 0)."""
    if last_uid:
        typ, data = client.uid("SEARCH", None, "UID", f"{last_uid + 1}:*")
    else:
        typ, data = client.uid("SEARCH", None, "ALL")
    if typ != "OK":
        raise imaplib.IMAP4.error(f"UID SEARCH failed: {data[0]!r}")
    # "n:*" always matches the highest UID, even one below n (RFC 3501 6.4.8): filtered here.
    return sorted(uid for uid in map(int, (data[0] or b"").split()) if uid > last_uid)


def _load_cursor(store: InboundStore, key: str) -> tuple[int, int] | None:
    """``(uidvalidity, last_uid)`` of the folder ``key``, or None before its first poll."""
    with store.db.connect() as conn:
        row = conn.execute(select(ImapCursorRow.uidvalidity, ImapCursorRow.last_uid).where(
            ImapCursorRow.tenant_id == store.tenant, ImapCursorRow.mailbox == key)).first()
    return None if row is None else (int(row.uidvalidity), int(row.last_uid))


def _save_cursor(store: InboundStore, key: str, uidvalidity: int, last_uid: int) -> None:
    values = {"uidvalidity": uidvalidity, "last_uid": last_uid, "updated_at": utcnow()}
    insert = upsert_insert(store.db.dialect)
    with store.db.connect(write=True) as conn:
        conn.execute(insert(ImapCursorRow).values(tenant_id=store.tenant, mailbox=key, **values)
                     .on_conflict_do_update(index_elements=["tenant_id", "mailbox"], set_=values))


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
