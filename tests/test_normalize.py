"""Normalisation agrees with the libraries it stands in front of."""

from __future__ import annotations

import random
import string
import unittest

from email_validator import EmailNotValidError, validate_email

from agent.errors import InvalidInput
from agent.leads.normalize import _plain_domain, normalize_company_name, normalize_email, registrable_domain
from agent.leads.sample import generate_leads

TRICKY_EMAILS = [
    "A.B@Example.COM", "a..b@x.example", ".a@x.example", "a.@x.example", "a@b", "a@localhost", "a@x.test",
    "a@123.456", "a@-x.example", "a@x-.example", "a@xn--bcher-kva.example", "a@bücher.example", "ü@x.example",
    "a b@x.example", '"quoted"@x.example', "a@[1.2.3.4]", "x" * 65 + "@x.example", "a@" + "b" * 64 + ".example",
    "a@x.example.", "a@@x.example", "a@x..example", "a+tag@x.example", "a@x.invalid", "a@x.onion", "a@x.local",
    "a@x_y.example", "a@x.c0m", "a@x.123", "a@", "@x.example", "a@ab--cd.example",
]


def _library(address: str) -> str | None:
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None


def _ours(address: str) -> str | None:
    try:
        return normalize_email(address)
    except InvalidInput:
        return None


class EmailFastPathTest(unittest.TestCase):
    def test_tricky_addresses_get_the_libraries_verdict(self) -> None:
        for address in TRICKY_EMAILS:
            with self.subTest(address=address):
                self.assertEqual(_ours(address), _library(address))

    def test_every_domain_the_fast_path_accepts_the_library_accepts_unchanged(self) -> None:
        # Given: sample domains, edge cases and random strings of domain-ish characters
        rng = random.Random(11)
        domains = {r["domain"] for r in generate_leads(3000)}
        domains |= {"x.invalid", "x.test", "x.local", "x.onion", "x.home.arpa", "ab--cd.example", "x.c0m",
                    "a" * 63 + ".example", "a" * 64 + ".example", "x.example.", "x..y", "1.2.3.4"}
        for _ in range(30000):
            domains.add("".join(rng.choice("ab-0.9_") for _ in range(rng.randint(1, 12))))
        for _ in range(3000):
            domains.add(".".join("".join(rng.choice(string.ascii_lowercase + string.digits + "-")
                                         for _ in range(rng.randint(1, 70))) for _ in range(rng.randint(1, 4))))
        # When / Then
        accepted = [d for d in domains if _plain_domain(d)]
        self.assertGreater(len(accepted), 500)
        for domain in accepted:
            self.assertEqual(_library(f"x@{domain}"), f"x@{domain}", domain)


class CompanyIdentityTest(unittest.TestCase):
    def test_legal_forms_and_punctuation_do_not_change_a_company(self) -> None:
        self.assertEqual(normalize_company_name("ACME Holdings, Inc."), normalize_company_name("Acme Holdings GmbH"))

    def test_registrable_domain_comes_from_urls_emails_and_subdomains(self) -> None:
        for value in ("https://www.acme.co.uk/about", "jane@sales.acme.co.uk", "acme.co.uk"):
            with self.subTest(value=value):
                self.assertEqual(registrable_domain(value), "acme.co.uk")
