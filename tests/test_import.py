"""CSV lead import: validation, idempotent upserts, de-duplication, header mapping.

One contract suite (``ImportContract``) runs against SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

from sqlalchemy import select

from agent.errors import InvalidInput
from agent.leads.importer import import_csv, read_csv_rows
from agent.storage.db import Database
from agent.storage.models import Company, Contact
from tests.support import TempHome, postgres_home, requires_real_services

GOOD_AND_BAD = """\
email,first_name,last_name,company,domain,lead_score,lawful_basis,phone
jane@acme.example,Jane,Doe,Acme,acme.example,80,legitimate_interest,+49 30 1234567
not-an-email,Bad,Email,Acme,acme.example,50,consent,
bob@globex.example,Bob,Stone,Globex,not a domain!,50,consent,
carol@initech.example,Carol,King,Initech,initech.example,abc,consent,
dave@umbrella.example,Dave,Ross,Umbrella,umbrella.example,40,because I said so,
erin@hooli.example,Erin,Wu,Hooli,hooli.example,40,consent,call me
frank@initech.example,Frank,Lee,Initech,initech.example,10,consent,
"""

THREE_LEADS = """\
email,first_name,last_name,company,domain,title
jane@acme.example,Jane,Doe,Acme,acme.example,CTO
bob@globex.example,Bob,Stone,Globex,globex.example,CEO
carol@initech.example,Carol,King,Initech,initech.example,VP Sales
"""


def _rows(db: Database, model: Any) -> list[dict[str, Any]]:
    """Every row of ``model``'s table as a dict, in id order."""
    with db.session() as session:
        table = model.__table__
        return [dict(r._mapping) for r in session.execute(select(table).order_by(table.c.id))]


def _contacts_by_email(db: Database) -> dict[str, dict[str, Any]]:
    return {row["email"]: row for row in _rows(db, Contact)}


class ImportContract:
    """The import behaviour every database backend must show."""

    def make_home(self) -> TempHome:  # pragma: no cover - provided by the backend test case
        raise NotImplementedError

    def setUp(self) -> None:
        self.home = self.make_home()
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        self.files = Path(tempfile.mkdtemp(prefix="agent-csv-"))
        self.addCleanup(shutil.rmtree, self.files, ignore_errors=True)

    def write_csv(self, text: str, name: str = "leads.csv", encoding: str = "utf-8") -> Path:
        path = self.files / name
        path.write_bytes(text.encode(encoding))
        return path

    def assertNothingWrittenBy(self, path: Path, field: str) -> None:
        # Given a store that already holds leads
        import_csv(self.write_csv(THREE_LEADS, "existing.csv"), self.db)
        contacts, companies = _rows(self.db, Contact), _rows(self.db, Company)

        # When the unreadable file is imported
        with self.assertRaises(InvalidInput) as caught:
            import_csv(path, self.db)

        # Then the error names the field and the store is as it was
        self.assertEqual(caught.exception.field, field)
        self.assertEqual(_rows(self.db, Contact), contacts)
        self.assertEqual(_rows(self.db, Company), companies)

    # -- bad rows ---------------------------------------------------------------
    def test_bad_rows_are_reported_with_their_line_and_field(self) -> None:
        # Given a file mixing good rows with one bad value per bad row
        path = self.write_csv(GOOD_AND_BAD)

        # When it is imported
        report = import_csv(path, self.db)

        # Then each bad row is named by its spreadsheet line (header = 1) and its field
        self.assertEqual(
            [(r.line, r.field) for r in report.rejected],
            [(3, "email"), (4, "domain"), (5, "lead_score"), (6, "lawful_basis"), (7, "phone")],
        )
        self.assertTrue(all(r.reason for r in report.rejected))

    def test_good_rows_are_inserted_despite_bad_rows_in_the_same_file(self) -> None:
        # Given a file mixing good and bad rows
        path = self.write_csv(GOOD_AND_BAD)

        # When it is imported
        report = import_csv(path, self.db)

        # Then only the good rows are stored
        self.assertEqual((report.total, report.inserted), (7, 2))
        self.assertEqual(sorted(_contacts_by_email(self.db)), ["frank@initech.example", "jane@acme.example"])

    def test_blank_lines_are_skipped_and_later_lines_keep_their_numbers(self) -> None:
        # Given a file with a blank line and an empty-valued line before a bad row
        path = self.write_csv("email,first_name\njane@acme.example,Jane\n\n,\nnot-an-email,Bob\n")

        # When it is imported
        report = import_csv(path, self.db)

        # Then the blank lines are no rows, and the bad row keeps its spreadsheet line
        self.assertEqual((report.total, report.inserted), (2, 1))
        self.assertEqual([(r.line, r.field) for r in report.rejected], [(5, "email")])

    # -- idempotency --------------------------------------------------------------
    def test_reimporting_the_same_file_reports_every_row_unchanged(self) -> None:
        # Given a file already imported once
        path = self.write_csv(THREE_LEADS)
        import_csv(path, self.db)

        # When it is imported again
        report = import_csv(path, self.db)

        # Then nothing is inserted or updated
        self.assertEqual((report.inserted, report.updated, report.unchanged), (0, 0, 3))
        self.assertEqual((report.companies_inserted, report.companies_updated), (0, 0))
        self.assertFalse(report.changed)

    def test_reimporting_the_same_file_leaves_the_tables_identical(self) -> None:
        # Given a file already imported once
        path = self.write_csv(THREE_LEADS)
        import_csv(path, self.db)
        contacts, companies = _rows(self.db, Contact), _rows(self.db, Company)

        # When it is imported again
        import_csv(path, self.db)

        # Then every column, updated_at included, is as it was
        self.assertEqual(_rows(self.db, Contact), contacts)
        self.assertEqual(_rows(self.db, Company), companies)

    def test_reimporting_a_file_with_domain_and_name_only_rows_of_one_company_changes_nothing(self) -> None:
        # Given a file where one company appears with its domain and, via a freemail row, by name only
        path = self.write_csv(
            "email,company,domain\n"
            "jane@acme.example,Acme Holdings,acme.example\n"
            "bob@gmail.com,Acme Holdings GmbH,\n"
        )
        import_csv(path, self.db)
        contacts = _rows(self.db, Contact)

        # When it is imported again
        report = import_csv(path, self.db)

        # Then nothing changes
        self.assertEqual((report.inserted, report.updated, report.unchanged), (0, 0, 2))
        self.assertEqual(_rows(self.db, Contact), contacts)

    def test_imported_and_updated_leads_are_found_by_full_text(self) -> None:
        # Given three leads imported, then Bob's title changed by a second import
        from agent.leads.query import LeadQuery
        from agent.leads.search import LeadSearch

        import_csv(self.write_csv(THREE_LEADS), self.db)
        search = LeadSearch(self.db)
        self.assertEqual(search.search(LeadQuery(text="Bob CEO")).total, 1)
        changed = THREE_LEADS.replace("Bob,Stone,Globex,globex.example,CEO", "Bob,Stone,Globex,globex.example,CFO")

        # When
        import_csv(self.write_csv(changed, "changed.csv"), self.db)

        # Then the index follows the row: the new title is found, the old one is gone
        self.assertEqual(search.search(LeadQuery(text="Bob CFO")).total, 1)
        self.assertEqual(search.search(LeadQuery(text="Bob CEO")).total, 0)

    def test_a_changed_row_is_reported_as_updated(self) -> None:
        # Given three leads already imported
        import_csv(self.write_csv(THREE_LEADS), self.db)

        # When the file comes back with Bob's title changed
        changed = THREE_LEADS.replace("Bob,Stone,Globex,globex.example,CEO", "Bob,Stone,Globex,globex.example,CFO")
        report = import_csv(self.write_csv(changed, "changed.csv"), self.db)

        # Then Bob is updated and the others are unchanged
        self.assertEqual((report.inserted, report.updated, report.unchanged), (0, 1, 2))
        self.assertEqual(_contacts_by_email(self.db)["bob@globex.example"]["title"], "CFO")

    def test_a_changed_row_leaves_the_other_rows_untouched(self) -> None:
        # Given three leads already imported
        import_csv(self.write_csv(THREE_LEADS), self.db)
        before = _contacts_by_email(self.db)

        # When the file comes back with Bob's title changed
        changed = THREE_LEADS.replace("Bob,Stone,Globex,globex.example,CEO", "Bob,Stone,Globex,globex.example,CFO")
        import_csv(self.write_csv(changed, "changed.csv"), self.db)

        # Then Jane and Carol are exactly as they were, updated_at included
        after = _contacts_by_email(self.db)
        for email in ("jane@acme.example", "carol@initech.example"):
            self.assertEqual(after[email], before[email])
        self.assertNotEqual(after["bob@globex.example"]["updated_at"], before["bob@globex.example"]["updated_at"])

    # -- companies ------------------------------------------------------------------
    def test_companies_are_deduplicated_by_registrable_domain(self) -> None:
        # Given one company written as a host, a URL and only an email domain
        path = self.write_csv(
            "email,company,domain\n"
            "a@acme.example,Acme,www.acme.example\n"
            "b@acme.example,Acme Corp,https://acme.example/x\n"
            "c@mail.acme.example,,\n"
        )

        # When it is imported
        report = import_csv(path, self.db)

        # Then there is one company, keyed by its registrable domain, holding all three contacts
        companies = _rows(self.db, Company)
        self.assertEqual([c["domain"] for c in companies], ["acme.example"])
        self.assertEqual(report.companies_inserted, 1)
        self.assertEqual({c["company_id"] for c in _rows(self.db, Contact)}, {companies[0]["id"]})

    def test_companies_without_domain_are_deduplicated_by_normalised_name(self) -> None:
        # Given the same company spelled with different legal forms, on freemail addresses
        path = self.write_csv(
            "email,company\n"
            'ann@gmail.com,"ACME Holdings, Inc."\n'
            "ben@outlook.com,Acme Holdings GmbH\n"
        )

        # When it is imported
        import_csv(path, self.db)

        # Then one company exists, under its normalised name, without a domain
        companies = _rows(self.db, Company)
        self.assertEqual([(c["normalized_name"], c["domain"]) for c in companies], [("acme holdings", None)])
        self.assertEqual({c["company_id"] for c in _rows(self.db, Contact)}, {companies[0]["id"]})

    def test_a_name_only_row_joins_the_company_with_that_name_and_a_domain_in_the_same_file(self) -> None:
        # Given one company appearing with its domain and, on a freemail row, by name only
        path = self.write_csv(
            "email,company,domain\n"
            "jane@acme.example,Acme Holdings,acme.example\n"
            "bob@gmail.com,Acme Holdings GmbH,\n"
        )

        # When it is imported
        import_csv(path, self.db)

        # Then there is one company and both contacts belong to it
        companies = _rows(self.db, Company)
        self.assertEqual([c["domain"] for c in companies], ["acme.example"])
        self.assertEqual({c["company_id"] for c in _rows(self.db, Contact)}, {companies[0]["id"]})

    # -- contacts -------------------------------------------------------------------
    def test_contacts_are_matched_by_email_case_insensitively(self) -> None:
        # Given a lead already imported in lower case
        import_csv(self.write_csv(THREE_LEADS), self.db)

        # When the same address comes back in mixed case
        report = import_csv(self.write_csv("email,title\nJane@ACME.example,CEO\n", "upper.csv"), self.db)

        # Then the existing contact is updated rather than a second one inserted
        self.assertEqual((report.inserted, report.updated), (0, 1))
        self.assertEqual(len(_rows(self.db, Contact)), 3)
        self.assertEqual(_contacts_by_email(self.db)["jane@acme.example"]["title"], "CEO")

    def test_a_duplicate_address_within_a_file_is_reported(self) -> None:
        # Given one address twice in a file, in different case
        path = self.write_csv(
            "email,title\n"
            "jane@acme.example,CTO\n"
            "bob@globex.example,CEO\n"
            "JANE@acme.example,Founder\n"
        )

        # When it is imported
        report = import_csv(path, self.db)

        # Then the earlier line is reported as a duplicate of the later one
        self.assertEqual([(d.line, d.field) for d in report.duplicates], [(2, "email")])
        self.assertIn("line 4", report.duplicates[0].reason)

    def test_the_last_occurrence_of_a_duplicate_address_is_stored(self) -> None:
        # Given one address twice in a file, in different case
        path = self.write_csv("email,title\njane@acme.example,CTO\nJANE@acme.example,Founder\n")

        # When it is imported
        report = import_csv(path, self.db)

        # Then one contact is stored, with the later row's values
        self.assertEqual(report.inserted, 1)
        self.assertEqual([(c["email"], c["title"]) for c in _rows(self.db, Contact)],
                         [("jane@acme.example", "Founder")])

    # -- headers ----------------------------------------------------------------------
    def test_header_aliases_map_onto_lead_fields(self) -> None:
        # Given a CRM export with alias headers
        path = self.write_csv(
            "E-mail,Company Name,Job Title,Website\n"
            "jane@acme.example,Acme,CTO,https://www.acme.example\n"
        )

        # When it is imported
        import_csv(path, self.db)

        # Then the values land in the right fields
        contact = _rows(self.db, Contact)[0]
        company = _rows(self.db, Company)[0]
        self.assertEqual((contact["email"], contact["title"]), ("jane@acme.example", "CTO"))
        self.assertEqual((company["name"], company["domain"]), ("Acme", "acme.example"))

    def test_unknown_columns_are_listed_as_ignored(self) -> None:
        # Given a file with columns we do not know
        path = self.write_csv("email,Favourite Colour,first_name,Notes\njane@acme.example,blue,Jane,vip\n")

        # When it is imported
        report = import_csv(path, self.db)

        # Then those columns are named in the report, with their original spelling
        self.assertEqual(report.ignored_columns, ["Favourite Colour", "Notes"])
        self.assertEqual(report.inserted, 1)

    def test_read_csv_rows_keys_rows_by_field_name(self) -> None:
        # Given a file with alias headers and an unknown column
        path = self.write_csv("E-mail,Job Title,Shoe Size\njane@acme.example,CTO,42\n")

        # When it is read
        rows, ignored = read_csv_rows(path)

        # Then rows are keyed by our field names and the unknown column is set aside
        self.assertEqual(rows, [{"email": "jane@acme.example", "title": "CTO"}])
        self.assertEqual(ignored, ["Shoe Size"])

    # -- unreadable files -------------------------------------------------------------
    def test_a_file_without_an_email_column_is_refused_and_writes_nothing(self) -> None:
        self.assertNothingWrittenBy(self.write_csv("name,company\nJane,Acme\n", "no-email.csv"), "email")

    def test_a_non_utf8_file_is_refused_and_writes_nothing(self) -> None:
        path = self.write_csv("email,first_name\nzoe@acme.example,Zoë\n", "latin1.csv", encoding="latin-1")
        self.assertNothingWrittenBy(path, "file")

    def test_an_empty_file_is_refused_and_writes_nothing(self) -> None:
        self.assertNothingWrittenBy(self.write_csv("", "empty.csv"), "file")

    def test_a_missing_file_is_refused_and_writes_nothing(self) -> None:
        self.assertNothingWrittenBy(self.files / "does-not-exist.csv", "file")


class ImportRobustnessContract:
    """Rows that could shift, grow or go stale; processes that import at once."""

    def make_home(self) -> TempHome:  # pragma: no cover - provided by the backend test case
        raise NotImplementedError

    def setUp(self) -> None:
        self.home = self.make_home()
        self.addCleanup(self.home.cleanup)
        self.db = self.home.database()
        self.files = Path(tempfile.mkdtemp(prefix="agent-csv-"))
        self.addCleanup(shutil.rmtree, self.files, ignore_errors=True)

    def write_csv(self, text: str, name: str = "leads.csv") -> Path:
        path = self.files / name
        path.write_text(text, encoding="utf-8")
        return path

    def test_a_row_with_a_stray_comma_is_refused_not_shifted(self) -> None:
        # Given: an unquoted "Acme, Inc." that adds a field
        path = self.write_csv("email,first_name,company,title,location\n"
                              "bo@acme.example,Bo,Acme, Inc.,CEO,Berlin\n"
                              "al@acme.example,Al,Acme,CTO,Paris\n")
        # When
        report = import_csv(path, self.db)
        # Then
        self.assertEqual([(r.line, r.field) for r in report.rejected], [(2, "row")])
        self.assertEqual((report.total, report.inserted), (2, 1))
        self.assertEqual(_contacts_by_email(self.db)["al@acme.example"]["title"], "CTO")

    def test_lines_are_counted_as_an_editor_shows_them_across_quoted_newlines(self) -> None:
        # Given: a quoted title spanning three physical lines, then a bad row on line 5
        path = self.write_csv('email,title\njane@acme.example,"Head\nof\nSales"\nnot-an-email,CTO\n')
        # When
        report = import_csv(path, self.db)
        # Then
        self.assertEqual([(r.line, r.field) for r in report.rejected], [(5, "email")])

    def test_a_company_name_too_long_once_normalised_is_refused_and_the_rest_imported(self) -> None:
        # Given: 255 characters that normalisation widens ("&" becomes " & ")
        long_name = ("A&" * 128)[:255]
        path = self.write_csv(f"email,company\nok@acme.example,Acme\nx@y.example,{long_name}\n")
        # When
        report = import_csv(path, self.db)
        # Then
        self.assertEqual([(r.line, r.field) for r in report.rejected], [(3, "company")])
        self.assertEqual(report.inserted, 1)

    def test_changing_a_company_refreshes_the_search_text_of_its_other_contacts(self) -> None:
        # Given: two contacts at a Widgets company
        from agent.leads.query import LeadQuery
        from agent.leads.search import LeadSearch

        import_csv(self.write_csv("email,company,domain,industry\na@acme.example,Acme,acme.example,Widgets\n"
                                  "b@acme.example,Acme,acme.example,Widgets\n", "one.csv"), self.db)
        # When: only one of them comes back with the company now in Gadgets
        import_csv(self.write_csv("email,company,domain,industry\na@acme.example,Acme,acme.example,Gadgets\n",
                                  "two.csv"), self.db)
        # Then: full text finds both under the new industry and neither under the old one
        search = LeadSearch(self.db)
        self.assertEqual(search.search(LeadQuery(text="gadgets")).total, 2)
        self.assertEqual(search.search(LeadQuery(text="widgets")).total, 0)

    def test_text_filters_fold_case_beyond_ascii(self) -> None:
        # Given
        from agent.leads.query import LeadQuery
        from agent.leads.search import LeadSearch

        import_csv(self.write_csv("email,location\nola@acme.example,Łódź\n"), self.db)
        # When
        total = LeadSearch(self.db).search(LeadQuery(location="ŁÓDŹ")).total
        # Then
        self.assertEqual(total, 1)

    def test_two_processes_importing_the_same_file_at_once_write_each_lead_once(self) -> None:
        # Given: 3,000 leads, half of the companies known only by name
        rows = ["email,first_name,company,domain"]
        for i in range(3000):
            domain = f"co{i % 50}.example" if i % 2 else ""
            rows.append(f"p{i}@mail{i % 50}.example,P{i},Company {i % 50},{domain}")
        path = self.write_csv("\n".join(rows) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_")}
        env.update(AGENT_DATABASE_URL=self.home.settings.resolved_database_url, AGENT_SAMPLE_DATA="off")
        code = ("import sys; from agent.leads.importer import import_csv; from agent.settings import get_settings;"
                "from agent.storage.db import Database;"
                "r = import_csv(sys.argv[1], Database.for_settings(get_settings()));"
                "print(r.inserted + r.updated + r.unchanged)")
        # When: two importers start together and both are waited for
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=120) for p in procs]
        # Then: both succeed, and every lead and company exists exactly once
        for proc, (out, errors) in zip(procs, outputs, strict=True):
            self.assertEqual(proc.returncode, 0, errors)
            self.assertEqual(out.strip(), "3000")
        self.assertEqual(len(_rows(self.db, Contact)), 3000)
        self.assertEqual(len(_rows(self.db, Company)), 50)  # 25 by domain, 25 by name only


class SQLiteImportRobustnessTests(ImportRobustnessContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return TempHome()


@requires_real_services()
class PostgresImportRobustnessTests(ImportRobustnessContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return postgres_home(self)


class SQLiteImportTests(ImportContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return TempHome()


@requires_real_services()
class PostgresImportTests(ImportContract, unittest.TestCase):
    def make_home(self) -> TempHome:
        return postgres_home(self)


class ImportCommandTests(unittest.TestCase):
    """``agent leads import FILE --json`` (the CLI in ``agent/cli``)."""

    def setUp(self) -> None:
        self.home = TempHome()
        self.addCleanup(self.home.cleanup)

    def test_leads_import_prints_a_json_report_with_the_inserted_count(self) -> None:
        # Given a CSV of three leads
        path = self.home.path / "leads.csv"
        path.write_text(THREE_LEADS, encoding="utf-8")
        env = {**os.environ, "AGENT_HOME": str(self.home.path), "AGENT_SAMPLE_DATA": "off"}

        # When the CLI imports it with --json
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", "leads", "import", str(path), "--json"],
            env=env, capture_output=True, text=True, timeout=120,
        )

        # Then it exits cleanly and prints the report as JSON
        self.assertEqual(result.returncode, 0, result.stderr)
        report = json.loads(result.stdout)
        self.assertEqual(report["inserted"], 3)
        self.assertEqual(report["rejected"], [])


if __name__ == "__main__":
    unittest.main()


class PausedGcTest(unittest.TestCase):
    def test_the_collector_is_paused_inside_and_restored_after_an_error(self) -> None:
        # Given
        import gc

        from agent.leads.store import paused_gc

        self.assertTrue(gc.isenabled())
        # When
        with self.assertRaises(ValueError):
            with paused_gc():
                inside = gc.isenabled()
                raise ValueError("boom")
        # Then
        self.assertFalse(inside)
        self.assertTrue(gc.isenabled())

    def test_a_collector_already_off_stays_off(self) -> None:
        import gc

        from agent.leads.store import paused_gc

        gc.disable()
        self.addCleanup(gc.enable)
        with paused_gc():
            pass
        self.assertFalse(gc.isenabled())
