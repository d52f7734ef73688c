"""A small IMAP4rev1 server for the tests, on 127.0.0.1: the mailbox provider we cannot reach here.

It speaks the part of the protocol a poller uses (CAPABILITY, LOGIN,
SELECT / EXAMINE with ``[UIDVALIDITY n]``, UID SEARCH ``ALL`` / ``UNSEEN`` /
``UID <set>``, UID FETCH ``BODY[]`` / ``BODY.PEEK[]``, UID STORE +FLAGS,
LOGOUT) over a real socket, so ``imaplib`` runs unchanged against it.

Messages are bytes with a UID and a seen flag.  UIDs only grow, as RFC 3501
asks, until ``renumber()`` gives the folder a new UIDVALIDITY and numbers its
messages from 1 again, as a server that rebuilt its index would.
``fail_after_fetch`` drops the connection right after sending a message, as
a poller crash would look from the server; a UID in ``fetch_nothing`` is
answered OK with no message, as for one expunged since the search.
"""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ImapServer"]


@dataclass
class _Mail:
    uid: int
    raw: bytes
    seen: bool = False


@dataclass
class _Box:
    user: str
    password: str
    mails: list[_Mail] = field(default_factory=list)
    uidvalidity: int = 1
    next_uid: int = 1
    fail_after_fetch: bool = False
    fetch_nothing: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _in_set(spec: str, uid: int, highest: int) -> bool:
    """Whether ``uid`` is in the sequence set ``spec`` ("4", "2:7", "5:*", "1,3:4"); ``*`` is ``highest``.

    A range matches from its lower end to its higher whatever the order it is written in, so
    ``9:*`` matches the highest UID even when that is below 9 (RFC 3501 6.4.8).
    """
    for part in spec.split(","):
        ends = [highest if end == "*" else int(end) for end in part.split(":", 1)]
        if min(ends) <= uid <= max(ends):
            return True
    return False


class _Handler(socketserver.StreamRequestHandler):
    def send(self, line: str | bytes) -> None:
        self.wfile.write(line if isinstance(line, bytes) else (line + "\r\n").encode())

    def handle(self) -> None:  # noqa: C901 - one small protocol loop
        box: _Box = self.server.box  # type: ignore[attr-defined]
        self.send("* OK test IMAP ready")
        readonly = False
        while True:
            line = self.rfile.readline()
            if not line:
                return
            parts = line.decode(errors="replace").strip().split(" ", 2)
            if len(parts) < 2:
                continue
            tag, command, rest = parts[0], parts[1].upper(), parts[2] if len(parts) > 2 else ""
            if command == "CAPABILITY":
                self.send("* CAPABILITY IMAP4rev1")
                self.send(f"{tag} OK done")
            elif command == "LOGIN":
                user, password = [p.strip('"') for p in rest.split(" ", 1)]
                ok = (user, password) == (box.user, box.password)
                self.send(f"{tag} OK logged in" if ok else f"{tag} NO wrong login")
            elif command in ("SELECT", "EXAMINE"):
                readonly = command == "EXAMINE"
                with box.lock:
                    exists, uidvalidity, uidnext = len(box.mails), box.uidvalidity, box.next_uid
                self.send(f"* {exists} EXISTS")
                self.send("* FLAGS (\\Seen)")
                self.send(f"* OK [UIDVALIDITY {uidvalidity}] UIDs valid")
                self.send(f"* OK [UIDNEXT {uidnext}] predicted next UID")
                self.send(f"{tag} OK [{'READ-ONLY' if readonly else 'READ-WRITE'}] {command.lower()}ed")
            elif command == "UID":
                sub, _, args = rest.partition(" ")
                self._uid(box, tag, sub.upper(), args, readonly)
                if sub.upper() == "FETCH" and box.fail_after_fetch:
                    return  # hang up before the client can note the message as read
            elif command == "LOGOUT":
                self.send("* BYE")
                self.send(f"{tag} OK bye")
                return
            else:
                self.send(f"{tag} BAD unknown command")

    def _uid(self, box: _Box, tag: str, sub: str, args: str, readonly: bool) -> None:
        if sub == "SEARCH":
            words = args.upper().split()
            with box.lock:
                highest = max((m.uid for m in box.mails), default=0)
                if words == ["ALL"]:
                    found = [m.uid for m in box.mails]
                elif words == ["UNSEEN"]:
                    found = [m.uid for m in box.mails if not m.seen]
                elif len(words) == 2 and words[0] == "UID":
                    found = [m.uid for m in box.mails if _in_set(words[1], m.uid, highest)]
                else:
                    self.send(f"{tag} BAD search criteria not supported here")
                    return
            self.send("* SEARCH " + " ".join(map(str, found)))
            self.send(f"{tag} OK searched")
        elif sub == "FETCH":
            uid = int(args.split(" ", 1)[0])
            with box.lock:
                mail = next((m for m in box.mails if m.uid == uid and uid not in box.fetch_nothing), None)
                if mail is not None and "PEEK" not in args.upper() and not readonly:
                    mail.seen = True  # BODY[] sets \Seen, BODY.PEEK[] does not (RFC 3501 6.4.5)
            if mail is not None:
                self.send(f"* {uid} FETCH (UID {uid} BODY[] {{{len(mail.raw)}}}".encode() + b"\r\n"
                          + mail.raw + b")\r\n")
            self.send(f"{tag} OK fetched")
        elif sub == "STORE":
            if readonly:
                self.send(f"{tag} NO the folder is read-only")
                return
            uid = int(args.split(" ", 1)[0])
            if "\\SEEN" in args.upper():
                with box.lock:
                    for m in box.mails:
                        if m.uid == uid:
                            m.seen = True
            self.send(f"* {uid} FETCH (UID {uid} FLAGS (\\Seen))")
            self.send(f"{tag} OK stored")
        else:
            self.send(f"{tag} BAD unknown UID command")


class ImapServer:
    """``with ImapServer(user, password) as server:`` then ``server.add(raw)``."""

    def __init__(self, user: str = "inbox", password: str = "secret") -> None:
        self.box = _Box(user, password)
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.box = self.box  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def uidvalidity(self) -> int:
        return self.box.uidvalidity

    @uidvalidity.setter
    def uidvalidity(self, value: int) -> None:
        with self.box.lock:
            self.box.uidvalidity = value

    def add(self, raw: bytes, *, seen: bool = False) -> int:
        """Deliver ``raw`` (already flagged ``\\Seen`` with ``seen``, as if a person had opened it); its UID."""
        with self.box.lock:
            uid = self.box.next_uid
            self.box.next_uid += 1
            self.box.mails.append(_Mail(uid, raw, seen))
        return uid

    def renumber(self, uidvalidity: int | None = None) -> list[int]:
        """A new UIDVALIDITY (default: one more) and new UIDs from 1 for the same messages; the UIDs."""
        with self.box.lock:
            self.box.uidvalidity = self.box.uidvalidity + 1 if uidvalidity is None else uidvalidity
            for number, mail in enumerate(self.box.mails, start=1):
                mail.uid = number
            self.box.next_uid = len(self.box.mails) + 1
            return [m.uid for m in self.box.mails]

    def seen(self) -> list[bool]:
        with self.box.lock:
            return [m.seen for m in self.box.mails]

    def __enter__(self) -> ImapServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
