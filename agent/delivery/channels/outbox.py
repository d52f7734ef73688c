"""Outbox channel: writes one RFC 5322 ``.eml`` file per message, exactly once.

The file name is the idempotency key and the file appears atomically (written
to a temporary name, made durable, then hard-linked into place), so neither a
retry nor two workers racing on the same key can produce a second message,
and a crash never leaves a truncated message under a key.  A batch's files
are made durable together: one ``syncfs`` on Linux, an fsync each elsewhere.
A claim left in ``sending`` (or ``failed``) is finished only for the same
content, and a file already in place counts only if it carries the claimed
Message-ID; anything else comes back ``conflict`` and nothing is written.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, ClassVar

from agent.agents.base import BaseAgent
from agent.context import RunContext
from agent.delivery.channels.common import claim_fields, finish_records, result_records, unclaimable
from agent.delivery.gates import SendGates
from agent.delivery.ledger import LedgerEntry, OutboxLedger
from agent.delivery.message import build_message
from agent.delivery.suppression import SuppressionList
from agent.delivery.unsubscribe import unsubscribe_url
from agent.envelope import make_envelope
from agent.errors import DeliveryError
from agent.storage.db import Database

__all__ = ["OutboxChannel"]


@dataclass
class _Staged:
    """A message written under a temporary name: not yet durable, not yet named."""

    entry: LedgerEntry
    temp: str
    path: Path
    created: bool
    result: dict[str, Any]  # the message's result, settled when the file is named


def _write_temp(directory: Path, data: bytes) -> str:
    """``data`` in a new file of ``directory`` under a temporary name (not fsynced here)."""
    # Not named *.eml: a crash can leave it behind, and it must never pass for a message.
    fd, temp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def _syncfs() -> Any:
    """Linux's ``syncfs(fd)`` (one flush of a whole file system), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int]
    return call


def _kernel_reports_syncfs_errors() -> bool:
    # syncfs() reports write-back errors from Linux 5.8 on; before, it returned 0 regardless.
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


_SYNCFS = _syncfs() if sys.platform.startswith("linux") and _kernel_reports_syncfs_errors() else None


class _Durability:
    """Makes a batch's staged files durable: one ``syncfs`` of the outbox's file system where Linux
    has it (a batch of fsyncs costs a journal commit each), else an fsync per file.

    The directory is opened before the batch writes anything: Linux reports a write-back error
    to ``syncfs`` on every descriptor opened before it happened, so an error another process's
    ``syncfs`` saw first is still ours to see.
    """

    def __init__(self, directory: Path) -> None:
        self.fd = os.open(directory, os.O_RDONLY) if _SYNCFS is not None else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def sync(self, temps: list[str]) -> None:
        if self.fd is not None:
            if _SYNCFS(self.fd) == 0:
                return
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        for temp in temps:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _sync_directory(directory: Path) -> None:
    """fsync the directory: the batch's new names are on disk before the ledger says sent."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_message_id(path: Path) -> str | None:
    """The ``Message-ID`` header of the ``.eml`` at ``path``, unfolded."""
    with path.open("rb") as handle:
        value = BytesHeaderParser().parse(handle).get("Message-ID")
    return "".join(str(value).split()) if value is not None else None


def _reason(exc: Exception) -> str:
    # Never the exception text in general: the email stack puts addresses in it.
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class OutboxChannel(BaseAgent):
    """Delivery channel that writes .eml files to the outbox directory."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"write", "send"})
    channel = "outbox"

    def __init__(self, db: Database | None = None, directory: Path | None = None) -> None:
        self._db = db
        self._directory = directory

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        settings = context.settings
        db = self._db or Database.for_settings(settings)
        directory = Path(self._directory or settings.resolved_outbox_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeliveryError(f"outbox directory {directory} is not writable: {exc}") from exc
        ledger = OutboxLedger(db)
        messages = list(request["messages"])
        # Checked again right before the hand-over: a suppression may have landed since the gate.
        suppressed = SuppressionList(db, tenant=context.tenant).suppressed(m["to"] for m in messages)
        results = result_records(messages, context, self.channel)
        sending = [(r, m) for r, m in zip(results, messages) if m["to"] not in suppressed]
        # Every key of the batch is claimed in one transaction before any file is written, and every
        # outcome marked in one after: a crash in between leaves claims in "sending", which a retry
        # finishes with the same Message-ID and content, never a second message.
        claims = ledger.claim_many([claim_fields(r["idempotency_key"], m, context, self.channel)
                                    for r, m in sending])
        gates = SendGates(db, context, request)
        screened = gates.screen([m for _, m in sending], suppressed)  # the suppression read just above
        marks: list[tuple[str, str, str | None]] = []
        staged: list[_Staged] = []
        held: list[LedgerEntry] = []  # claims a gate deferred: given back
        cancelled: list[LedgerEntry] = []  # claims a gate stopped for good: given back, approvals cancelled
        attempted = 0
        first: dict[str, dict[str, Any]] = {}  # each key's first message; a repeat copies its outcome
        try:
            durability = _Durability(directory)  # opened before anything is written (see its doc)
            try:
                for index, (result, msg) in enumerate(sending):
                    key = result["idempotency_key"]
                    attempted += 1
                    if key in first:  # the same (campaign, lead, step) twice in one request
                        first[key].setdefault("_copies", []).append(result)
                        continue
                    entry, created = claims[key]
                    stopped = screened.get(index) if entry.state != "sent" else None
                    if stopped is None and created:
                        stopped = gates.pace(msg)
                        if stopped is None and gates.waited:  # a jitter wait: read the gates again after it
                            stopped = gates.screen([msg]).get(0)
                    if stopped is not None and created:
                        (cancelled if gates.final(stopped) else held).append(entry)
                        result.update(stopped)
                    elif (stopped is not None and entry.state in ("sending", "failed")
                          and not (directory / f"{key}.eml").exists()):
                        marks.append((key, "failed", None))  # an unfinished earlier attempt, stopped now
                        result.update(stopped)
                    else:
                        self._deliver(entry, created, directory, msg, context, marks, staged, result)
                    first[key] = result
            finally:
                # What was staged is finished whatever stopped the batch: durable, then named.
                try:
                    self._publish(staged, marks, durability)
                finally:
                    durability.close()
        finally:
            # On disk before the ledger says sent: a crash in between leaves "sending", finished on retry.
            if any(state == "sent" for _, state, _ in marks):
                _sync_directory(directory)
            ledger.mark_many(marks)
            for result in first.values():
                for copy in result.pop("_copies", []):
                    copy.update({k: result[k] for k in ("status", "reason", "message_id", "location")})
                    if result["status"] == "sent":
                        copy.update(status="duplicate", reason="already_sent")
            # A batch stopped by a failure leaves no claim on the messages it never tried.
            ledger.release_many(held + [claims[r["idempotency_key"]][0] for r, _ in sending[attempted:]
                                        if claims[r["idempotency_key"]][1]])
            ledger.release_many(cancelled, cancel=True)
        gates.sent(*(msg for result, msg in sending if result.get("status") == "sent"))
        records = finish_records(results, messages, suppressed, context, self.channel)
        return make_envelope(records, source=f"channel:{self.channel}", run_id=context.run_id,
                             flow=context.flow, node=context.node, agent=self.channel,
                             duration_ms=context.elapsed_ms())

    def _deliver(self, entry: LedgerEntry, created: bool, directory: Path, msg: Mapping[str, Any],
                 context: RunContext, marks: list[tuple[str, str, str | None]], staged: list[_Staged],
                 result: dict[str, Any]) -> None:
        """Settle ``result`` now (duplicate, conflict, a file already in place), or stage the
        message's file for ``_publish``."""
        result.update(self._outcome(entry, created, directory, msg, context, marks, staged, result))

    def _outcome(self, entry: LedgerEntry, created: bool, directory: Path, msg: Mapping[str, Any],
                 context: RunContext, marks: list[tuple[str, str, str | None]], staged: list[_Staged],
                 result: dict[str, Any]) -> dict[str, Any]:
        settings = context.settings
        key = entry.idempotency_key
        if entry.state == "sent":
            return {"status": "duplicate", "reason": "already_sent", "message_id": entry.message_id,
                    "location": entry.location}
        blocked = unclaimable(entry, created)
        if blocked is not None:
            return {**blocked, "location": None}
        if not created and (entry.record_hash != msg["parent_hash"] or entry.to_address != msg["to"]):
            # The key was claimed for other content: finishing it would send this message under
            # a Message-ID (and maybe to an address) that was fixed for another.
            return {"status": "conflict", "reason": "content_changed", "message_id": None, "location": None}
        # New claim, or a claim left in "sending" by a crash: finish it with the same Message-ID.
        path = directory / f"{key}.eml"
        try:
            if path.exists():
                return self._found(path, entry, marks)
            data = build_message(sender=settings.sender, to=msg["to"], subject=msg["subject"],
                                 body=msg["body"], message_id=entry.message_id,
                                 postal_address=settings.postal_address, send_id=key,
                                 unsubscribe_url=unsubscribe_url(settings, context.tenant, msg["campaign_id"],
                                                                 msg["lead_id"], msg["step"]),
                                 in_reply_to=msg.get("in_reply_to"), references=msg.get("references"))
            temp = _write_temp(directory, data)
        except Exception as exc:
            marks.append((key, "failed", None))
            raise DeliveryError(f"outbox key {key[:12]}… could not be written: {_reason(exc)}") from exc
        staged.append(_Staged(entry, temp, path, created, result))
        return {"status": "sending", "reason": None, "message_id": entry.message_id, "location": None}

    @staticmethod
    def _found(path: Path, entry: LedgerEntry, marks: list[tuple[str, str, str | None]]) -> dict[str, Any]:
        """A file already under the key: this claim's message (a crash after it was named), or not."""
        if _file_message_id(path) != entry.message_id:
            # Another message already sits under this key (say, the ledger was reset): leave the
            # file be and mark the row "unknown" for an operator, rather than claim a send.
            marks.append((entry.idempotency_key, "unknown", None))
            return {"status": "conflict", "reason": "outbox_file_mismatch", "message_id": None, "location": None}
        marks.append((entry.idempotency_key, "sent", str(path)))
        return {"status": "sent", "reason": "resumed", "message_id": entry.message_id, "location": str(path)}

    def _publish(self, staged: list[_Staged], marks: list[tuple[str, str, str | None]],
                 durability: _Durability) -> None:
        """Make the staged files durable together, then give each its name (hard link: a file
        already there is never replaced), and settle their results and ledger marks."""
        if not staged:
            return
        try:
            try:
                durability.sync([s.temp for s in staged])
            except OSError as exc:
                for item in staged:
                    marks.append((item.entry.idempotency_key, "failed", None))
                    item.result.update(status="failed", reason="outbox_write_failed")
                raise DeliveryError(f"outbox files could not be made durable: {_reason(exc)}") from exc
            for item in staged:
                try:
                    os.link(item.temp, item.path)
                except FileExistsError:  # another worker named the same key first
                    item.result.update(self._found(item.path, item.entry, marks))
                    continue
                except OSError as exc:
                    key = item.entry.idempotency_key
                    marks.append((key, "failed", None))
                    item.result.update(status="failed", reason="outbox_write_failed")
                    raise DeliveryError(f"outbox key {key[:12]}… could not be named: {_reason(exc)}") from exc
                marks.append((item.entry.idempotency_key, "sent", str(item.path)))
                item.result.update(status="sent", reason=None if item.created else "resumed",
                                   location=str(item.path))
        finally:
            for item in staged:
                try:
                    os.unlink(item.temp)
                except FileNotFoundError:
                    pass
