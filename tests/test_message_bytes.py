"""``build_message`` writes plain ASCII messages itself: the bytes must be the email library's, byte for byte."""

from __future__ import annotations

import random
import string
import unittest
from datetime import datetime, timezone

from agent.delivery import message as m

DATE = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)
POSTAL = "Example Ltd, 1 Sample Street, Springfield"
SENDERS = ["Outreach Team <outreach@sender.example>", "a@b.example", '"Team, Inc" <x@y.example>',
           "Jörg Groß <j@x.example>"]
ADDRESSES = ["anna.b@example.com", "x+y@sub.example.org", "a..b@x.example", '"q r"@x.example', "jörg@x.example",
             "UPPER@EXAMPLE.COM", "o'neil@ex-ample.example", "a@xn--mnchen-3ya.example"]
IDS = ["<179549058078.11219.3919807810060225774@sender.example>", "<x@y.example>"]
CHARS = string.ascii_letters + string.digits + " .,!?'\"-:;()[]<>@#$%&*+=/\\_~`{}|^"


def both(sender: str, to: str, subject: str, body: str, message_id: str) -> tuple[bytes, bytes]:
    built = m.build_message(sender=sender, to=to, subject=subject, body=body, message_id=message_id,
                            postal_address=POSTAL, send_id="ab" * 32, date=DATE)
    text = body.rstrip() + m._footer(sender, POSTAL)
    reference = m._library_message(sender, to, subject, text, message_id, "ab" * 32, m.format_datetime(DATE))
    return built, reference


class PlainMessageBytesTest(unittest.TestCase):
    def test_a_typical_outreach_message_takes_the_plain_path_and_matches_the_library(self) -> None:
        subject, body = "Acme and pipeline quality", "Hi Anna,\n\nA short note about Acme.\n\nBest,\nThe team"
        text = body.rstrip() + m._footer(SENDERS[0], POSTAL)
        plain = m._plain_message(SENDERS[0], ADDRESSES[0], subject, text, IDS[0], "ab" * 32, m.format_datetime(DATE))
        self.assertIsNotNone(plain)
        built, reference = both(SENDERS[0], ADDRESSES[0], subject, body, IDS[0])
        self.assertEqual(built, reference)

    def test_every_message_matches_the_library_byte_for_byte(self) -> None:
        # Given a seeded corpus: plain cases, and cases only the library may write (non-ASCII,
        # quoted addresses, double spaces, encoded-word look-alikes, long lines, CR, tabs)
        rng = random.Random(20261124)
        plain = 0
        for case in range(1500):
            subject = "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 60)))
            if rng.random() < 0.1:
                subject = rng.choice(["  padded", "Grüße aus Köln", "=?utf-8?q?x?= trick", "x" * 950])
            body = "".join(rng.choice(CHARS + "\n\t") for _ in range(rng.randint(0, 300)))
            if rng.random() < 0.1:
                body = rng.choice(["y" * 1200, "line\r\nother", "naïve café", "tab\there", ""])
            sender, to, mid = rng.choice(SENDERS), rng.choice(ADDRESSES), rng.choice(IDS)
            text = body.rstrip() + m._footer(sender, POSTAL)
            plain += m._plain_message(sender, to, subject, text, mid, "ab" * 32, m.format_datetime(DATE)) is not None
            # When both paths build it / Then the bytes are the same
            with self.subTest(case=case):
                try:
                    text = body.rstrip() + m._footer(sender, POSTAL)
                    m._library_message(sender, to, subject, text, mid, "ab" * 32, m.format_datetime(DATE))
                except Exception as refused:
                    # What the library refuses (an address it cannot write) is refused either way
                    with self.assertRaises(type(refused)):
                        both(sender, to, subject, body, mid)
                    continue
                built, reference = both(sender, to, subject, body, mid)
                self.assertEqual(built, reference)
        # And the corpus exercised both paths
        self.assertGreater(plain, 200)
        self.assertLess(plain, 1500)


if __name__ == "__main__":
    unittest.main()
