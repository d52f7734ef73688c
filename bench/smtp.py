"""Messages per second to a local SMTP server, through the whole delivery path.

A real SMTP server (aiosmtpd, in a process of its own so it does not share
our GIL) accepts and discards on 127.0.0.1.  Ours: ``--messages`` messages in
batches of ``--batch`` through the ``DeliveryOrchestrator`` and the SMTP
channel (gates, suppression checked again, ledger claim with the Message-ID
fixed first, bytes built, one connection per batch, ledger marked), on a
fresh SQLite store.  Peers on the same server and the same message bytes:
raw ``smtplib`` reusing one connection (the floor of SMTP itself from
Python), and raw ``smtplib`` with a new connection per message (what a
sender without connection reuse pays).  Target: >= 200 messages/s.

    python bench/smtp.py [--messages 2000] [--batch 200]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import shutil  # noqa: E402
import smtplib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from agent.delivery.message import build_message, new_message_id  # noqa: E402
from agent.high_level_agents.orchestrators import DeliveryOrchestrator  # noqa: E402
from agent.settings import get_settings  # noqa: E402
from agent.storage.db import Database  # noqa: E402
from bench.common import cpu_reference  # noqa: E402

SERVER = """
import sys, time
from aiosmtpd.controller import Controller
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def records(count: int, offset: int = 0) -> list[dict]:
    return [{"to": f"person{n}@acme.example", "subject": f"A question for person {n}",
             "body": f"Hello {n},\n\nWould a short call next week be useful?\n\nSam", "lead_id": f"lead-{n}",
             "campaign_id": "bench", "step": 1} for n in range(offset, offset + count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    home = Path(tempfile.mkdtemp(prefix="agent-smtp-bench-"))
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        settings = get_settings(home=home, database_url=f"sqlite:///{home / 'bench.db'}", sample_data="off",
                                smtp_host="127.0.0.1", smtp_port=port, smtp_security="none")
        Database.for_settings(settings)
        print(f"cpu_ref={cpu_reference()} s  messages={args.messages} batch={args.batch}")
        orchestrator = DeliveryOrchestrator(settings=settings)
        started = time.perf_counter()
        sent = 0
        for offset in range(0, args.messages, args.batch):
            batch = records(min(args.batch, args.messages - offset), offset)
            envelope = orchestrator.run({"records": batch, "campaign_id": "bench", "allow_delivery": True,
                                         "channel": "smtp"})
            sent += envelope["metadata"]["counts"].get("sent", 0)
        ours = sent / (time.perf_counter() - started)
        assert sent == args.messages, f"only {sent} of {args.messages} sent"

        payloads = [build_message(sender=settings.sender, to=r["to"], subject=r["subject"], body=r["body"],
                                  message_id=new_message_id(settings.sender), postal_address=settings.postal_address,
                                  send_id=str(n)) for n, r in enumerate(records(args.messages))]
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for data, r in zip(payloads, records(args.messages)):
                smtp.sendmail("outreach@sender.example", [r["to"]], data)
        reuse = args.messages / (time.perf_counter() - started)
        count = min(args.messages, 500)
        started = time.perf_counter()
        for data, r in zip(payloads[:count], records(count)):
            with smtplib.SMTP("127.0.0.1", port) as smtp:
                smtp.sendmail("outreach@sender.example", [r["to"]], data)
        fresh = count / (time.perf_counter() - started)

        print(f"ours: DeliveryOrchestrator + SMTP channel : {ours:8,.0f} messages/s "
              f"(ledger, gates, bytes, one connection per batch of {args.batch})")
        print(f"peer: raw smtplib, one connection         : {reuse:8,.0f} messages/s  (ours/peer {ours / reuse:.2f})")
        print(f"peer: raw smtplib, a connection each      : {fresh:8,.0f} messages/s")
        print(f"target >= 200 messages/s: {'PASS' if ours >= 200 else 'FAIL'}")
        print(f"smtp_messages_per_s={ours:.0f}")
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)
        Database.forget_all()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
