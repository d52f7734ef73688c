"""Inbound classification: messages per second, rules alone and the whole ReplyOrchestrator path.

The messages are the repository's inbound fixtures (bounces, complaints,
auto-replies, out-of-office, unsubscribe requests, replies, malformed mail),
repeated to ``--messages``.  The peer is the email library's own parsing of
the same bytes (``email.message_from_bytes`` with the default policy): what
reading a message costs before any rule runs.  Then the full path: each
message stored raw and processed by the ``ReplyOrchestrator`` (classify,
match against the ledger, act, audit the run) on a fresh SQLite store.

    python bench/inbound.py [--messages 2000]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import email  # noqa: E402
import email.policy  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from agent.high_level_agents.orchestrators import ReplyOrchestrator  # noqa: E402
from agent.inbound.classify import classify  # noqa: E402
from agent.inbound.intake import process_pending  # noqa: E402
from agent.inbound.store import InboundStore  # noqa: E402
from agent.settings import get_settings  # noqa: E402
from agent.storage.db import Database  # noqa: E402
from bench.common import cpu_reference  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "inbound"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    samples = [p.read_bytes() for p in sorted(FIXTURES.iterdir()) if p.is_file() and p.stat().st_size]
    messages = [samples[n % len(samples)] for n in range(args.messages)]
    print(f"cpu_ref={cpu_reference()} s  messages={args.messages} (from {len(samples)} fixtures)")

    started = time.perf_counter()
    for raw in messages:
        email.message_from_bytes(raw, policy=email.policy.default)
    parse = args.messages / (time.perf_counter() - started)
    started = time.perf_counter()
    kinds: dict[str, int] = {}
    for raw in messages:
        kind = classify(email.message_from_bytes(raw, policy=email.policy.default)).kind
        kinds[kind] = kinds.get(kind, 0) + 1
    rules = args.messages / (time.perf_counter() - started)

    home = Path(tempfile.mkdtemp(prefix="agent-inbound-bench-"))
    try:
        settings = get_settings(home=home, database_url=f"sqlite:///{home / 'bench.db'}", sample_data="off",
                                embedder="hashing")
        store = InboundStore(Database.for_settings(settings))
        # Distinct messages (a repeated one is stored once, by design): each gets its own first Message-ID.
        distinct = [f"Message-ID: <bench-{n}@bench.example>\r\n".encode() + raw
                    for n, raw in enumerate(messages[: min(args.messages, 500)])]
        started = time.perf_counter()
        for raw in distinct:
            store.store(raw, source="bench")
        counts = process_pending(ReplyOrchestrator(settings=settings), store, limit=len(distinct))
        full = len(distinct) / (time.perf_counter() - started)
    finally:
        Database.forget_all()
        shutil.rmtree(home, ignore_errors=True)

    print(f"peer: email.message_from_bytes alone     : {parse:9,.0f} messages/s")
    print(f"ours: parse + classification rules      : {rules:9,.0f} messages/s  (ours/peer {rules / parse:.2f})")
    print(f"ours: stored + ReplyOrchestrator, audited: {full:9,.0f} messages/s  ({len(distinct)} messages)")
    print(f"kinds: {dict(sorted(kinds.items()))}; processed: {dict(sorted(counts.items()))}")
    print(f"inbound_classify_per_s={rules:.0f}")


if __name__ == "__main__":
    main()
