"""A small IMAP4rev1 server for the tests, on 127.0.0.1: the mailbox provider we cannot reach here.

It speaks the part of the protocol a poller uses (CAPABILITY, LOGIN, SELECT,
UID SEARCH UNSEEN, UID FETCH BODY.PEEK[], UID STORE +FLAGS, LOGOUT) over a
real socket, so ``imaplib`` runs unchanged against it.  Messages are bytes
with a seen flag; ``fail_after_fetch`` drops the connection after sending a
message, before any STORE, as a poller crash would look from the server.
"""

from __future__ import annotations

import re
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
    fail_after_fetch: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(socketserver.StreamRequestHandler):
    box: _Box

    def send(self, line: str | bytes) -> None:
        self.wfile.write(line if isinstance(line, bytes) else (line + "\r\n").encode())

    def handle(self) -> None:  # noqa: C901 - one small protocol loop
        box = self.server.box  # type: ignore[attr-defined]
        self.send("* OK test IMAP ready")
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
            elif command == "SELECT":
                self.send(f"* {len(box.mails)} EXISTS")
                self.send("* FLAGS (\\Seen)")
                self.send(f"{tag} OK [READ-WRITE] selected")
            elif command == "UID":
                sub, _, args = rest.partition(" ")
                sub = sub.upper()
                if sub == "SEARCH":
                    with box.lock:
                        uids = [str(m.uid) for m in box.mails if not m.seen]
                    self.send("* SEARCH " + " ".join(uids))
                    self.send(f"{tag} OK searched")
                elif sub == "FETCH":
                    uid = int(args.split(" ", 1)[0])
                    mail = next(m for m in box.mails if m.uid == uid)
                    self.send(f"* {uid} FETCH (UID {uid} BODY[] {{{len(mail.raw)}}}".encode() + b"\r\n"
                              + mail.raw + b")\r\n")
                    self.send(f"{tag} OK fetched")
                    if box.fail_after_fetch:
                        return  # hang up before the client can flag it seen
                elif sub == "STORE":
                    uid = int(args.split(" ", 1)[0])
                    if re.search(r"\\Seen", args):
                        with box.lock:
                            for m in box.mails:
                                if m.uid == uid:
                                    m.seen = True
                    self.send(f"* {uid} FETCH (UID {uid} FLAGS (\\Seen))")
                    self.send(f"{tag} OK stored")
                else:
                    self.send(f"{tag} BAD unknown UID command")
            elif command == "LOGOUT":
                self.send("* BYE")
                self.send(f"{tag} OK bye")
                return
            else:
                self.send(f"{tag} BAD unknown command")


class ImapServer:
    """``with ImapServer(user, password) as server:`` then ``server.add(raw)``."""

    def __init__(self, user: str = "inbox", password: str = "secret") -> None:
        self.box = _Box(user, password)
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.box = self.box  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add(self, raw: bytes) -> None:
        with self.box.lock:
            self.box.mails.append(_Mail(len(self.box.mails) + 1, raw))

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
