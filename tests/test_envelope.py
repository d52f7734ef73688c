"""The canonical envelope: building, hashing, validating and the published schema."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path

from agent.envelope import (
    envelope_json_schema,
    make_envelope,
    make_provenance,
    record_hash,
    validate_envelope,
)
from agent.errors import EnvelopeError, InvalidInput

REPO_ROOT = Path(__file__).resolve().parents[1]
HEX64 = r"^[0-9a-f]{64}$"


def _parse_utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _valid_envelope() -> dict:
    return make_envelope(
        [{"name": "Ada", "company": "Acme"}, {"name": "Grace", "company": "Navy"}],
        source="test:leads",
        run_id="run-1",
        flow="prospecting",
        node="search",
        agent="lead_search",
    )


class MakeEnvelopeProvenanceTests(unittest.TestCase):
    def test_each_record_gets_provenance_naming_source_agent_run_and_node(self):
        # Given a plain record with no provenance
        record = {"name": "Ada"}

        # When it is wrapped in an envelope
        env = make_envelope([record], source="db:contacts", run_id="run-7", node="search", agent="lead_search")

        # Then its provenance names where it came from and who produced it
        prov = env["records"][0]["provenance"]
        self.assertEqual(
            {k: prov[k] for k in ("source", "source_id", "agent", "run_id", "node", "parents")},
            {"source": "db:contacts", "source_id": None, "agent": "lead_search",
             "run_id": "run-7", "node": "search", "parents": []},
        )

    def test_provenance_hash_is_the_record_hash_of_the_content(self):
        # Given a record
        record = {"name": "Ada", "score": 3}

        # When it is wrapped in an envelope
        env = make_envelope([record], source="test")

        # Then its provenance hash is the sha256 of its content
        self.assertEqual(env["records"][0]["provenance"]["hash"], record_hash(record))
        self.assertRegex(env["records"][0]["provenance"]["hash"], HEX64)

    def test_provenance_retrieved_at_is_a_utc_timestamp(self):
        # Given / When an envelope of one record
        env = make_envelope([{"name": "Ada"}], source="test")

        # Then the record's retrieved_at is a UTC ISO-8601 timestamp
        retrieved_at = _parse_utc(env["records"][0]["provenance"]["retrieved_at"])
        self.assertEqual(retrieved_at.utcoffset(), timedelta(0))

    def test_input_records_are_not_mutated(self):
        # Given a record the caller still holds
        record = {"name": "Ada"}

        # When it is wrapped in an envelope
        make_envelope([record], source="test")

        # Then the caller's dict has not grown a provenance
        self.assertEqual(record, {"name": "Ada"})

    def test_existing_provenance_keeps_its_origin_but_gets_a_fresh_hash(self):
        # Given a record carrying provenance from upstream, edited since it was hashed
        upstream = {"name": "Ada"}
        prov = make_provenance(upstream, source="crm", source_id="crm/42", parents=["a" * 64])
        edited = {"name": "Ada Lovelace", "provenance": prov}

        # When it is wrapped again further down the flow
        env = make_envelope([edited], source="enricher", run_id="run-2", node="enrich")

        # Then its origin is kept, the hash matches the new content and the gaps are filled
        out = env["records"][0]["provenance"]
        self.assertEqual(
            (out["source"], out["source_id"], out["parents"], out["hash"], out["run_id"], out["node"]),
            ("crm", "crm/42", ["a" * 64], record_hash({"name": "Ada Lovelace"}), "run-2", "enrich"),
        )

    def test_non_serialisable_record_is_refused_naming_its_index(self):
        # Given a second record holding a set
        records = [{"ok": 1}, {"tags": {"a", "b"}}]

        # When / Then building the envelope names the record
        with self.assertRaises(EnvelopeError) as caught:
            make_envelope(records, source="test")
        self.assertEqual(caught.exception.field, "records[1]")


class MakeEnvelopeMetadataTests(unittest.TestCase):
    def test_metadata_carries_the_given_run_flow_node_and_source(self):
        # Given / When an envelope built with explicit identifiers
        env = make_envelope([], source="db:contacts", run_id="run-9", flow="prospecting",
                            node="search", duration_ms=12.5)

        # Then metadata reports them
        meta = env["metadata"]
        self.assertEqual(
            {k: meta[k] for k in ("run_id", "flow", "node", "source", "duration_ms")},
            {"run_id": "run-9", "flow": "prospecting", "node": "search",
             "source": "db:contacts", "duration_ms": 12.5},
        )

    def test_metadata_has_every_contract_key(self):
        # Given / When a minimal envelope
        env = make_envelope([], source="test")

        # Then every key the contract names is present
        self.assertLessEqual(
            {"run_id", "flow", "node", "source", "created_at", "total_count", "partial", "errors", "duration_ms"},
            set(env["metadata"]),
        )

    def test_created_at_is_a_utc_iso_timestamp_of_now(self):
        # Given the time before building
        before = datetime.now(timezone.utc)

        # When an envelope is built
        env = make_envelope([], source="test")

        # Then created_at is UTC and not earlier than the call
        created_at = _parse_utc(env["metadata"]["created_at"])
        self.assertEqual(created_at.utcoffset(), timedelta(0))
        self.assertGreaterEqual(created_at, before)

    def test_run_id_is_generated_when_not_given(self):
        # Given / When two envelopes without a run id
        first = make_envelope([], source="test")
        second = make_envelope([], source="test")

        # Then each got its own non-empty run id
        self.assertTrue(first["metadata"]["run_id"])
        self.assertNotEqual(first["metadata"]["run_id"], second["metadata"]["run_id"])

    def test_total_count_defaults_to_the_number_of_records(self):
        # Given / When three records and no total_count
        env = make_envelope([{"i": 1}, {"i": 2}, {"i": 3}], source="test")

        # Then total_count is 3
        self.assertEqual(env["metadata"]["total_count"], 3)

    def test_explicit_total_count_is_kept_for_a_page_of_results(self):
        # Given / When one page of a larger result
        env = make_envelope([{"i": 1}], source="test", total_count=40)

        # Then total_count is the size of the whole result
        self.assertEqual(env["metadata"]["total_count"], 40)

    def test_partial_defaults_to_false(self):
        # Given / When an envelope built without partial
        env = make_envelope([], source="test")

        # Then it is not partial
        self.assertIs(env["metadata"]["partial"], False)

    def test_errors_are_stamped_with_the_node(self):
        # Given an error raised in a node
        errors = [{"code": "timeout", "message": "slow"}]

        # When an envelope carries it
        env = make_envelope([], source="test", node="enrich", partial=True, errors=errors)

        # Then the error names the node it came from
        self.assertEqual(env["metadata"]["errors"], [{"code": "timeout", "message": "slow", "node": "enrich"}])

    def test_extra_keyword_arguments_become_metadata(self):
        # Given / When an envelope built with an extra key
        env = make_envelope([], source="test", next_offset=20)

        # Then the extra key is in metadata
        self.assertEqual(env["metadata"]["next_offset"], 20)

    def test_built_envelope_is_json_serialisable(self):
        # Given / When an envelope
        env = _valid_envelope()

        # Then it round-trips through JSON unchanged
        self.assertEqual(json.loads(json.dumps(env)), env)


class RecordHashTests(unittest.TestCase):
    def test_hash_is_a_sha256_hex_digest(self):
        # Given / When a record is hashed
        digest = record_hash({"name": "Ada"})

        # Then it is 64 lowercase hex characters
        self.assertRegex(digest, HEX64)

    def test_hash_ignores_provenance(self):
        # Given the same record with and without provenance
        bare = {"name": "Ada"}
        with_prov = {"name": "Ada", "provenance": {"source": "x", "hash": "0" * 64}}

        # When / Then both hash the same
        self.assertEqual(record_hash(bare), record_hash(with_prov))

    def test_hash_ignores_key_order(self):
        # Given the same fields in two orders, nested too
        first = {"a": 1, "b": {"x": 1, "y": 2}}
        second = {"b": {"y": 2, "x": 1}, "a": 1}

        # When / Then both hash the same
        self.assertEqual(record_hash(first), record_hash(second))

    def test_hash_changes_when_content_changes(self):
        # Given two records that differ in one value
        first = {"name": "Ada", "score": 1}
        second = {"name": "Ada", "score": 2}

        # When / Then their hashes differ
        self.assertNotEqual(record_hash(first), record_hash(second))

    def test_hash_of_non_serialisable_record_raises_envelope_error(self):
        # Given a record holding a datetime
        record = {"at": datetime.now(timezone.utc)}

        # When / Then hashing it raises the project's error
        with self.assertRaises(EnvelopeError):
            record_hash(record)


class ValidateEnvelopeTests(unittest.TestCase):
    def assertRejectedAt(self, env, field: str) -> EnvelopeError:
        with self.assertRaises(EnvelopeError) as caught:
            validate_envelope(env)
        self.assertEqual(caught.exception.field, field)
        self.assertTrue(caught.exception.reason)
        return caught.exception

    def test_valid_envelope_is_returned_unchanged(self):
        # Given a valid envelope and a copy of it
        env = _valid_envelope()
        snapshot = copy.deepcopy(env)

        # When it is validated
        result = validate_envelope(env)

        # Then the very same object comes back, untouched
        self.assertIs(result, env)
        self.assertEqual(env, snapshot)

    def test_envelope_error_is_an_invalid_input(self):
        # Given / When / Then callers catching InvalidInput also catch envelope errors
        self.assertTrue(issubclass(EnvelopeError, InvalidInput))

    def test_missing_run_id_is_named(self):
        # Given an envelope without metadata.run_id
        env = _valid_envelope()
        del env["metadata"]["run_id"]

        # When / Then the error names metadata.run_id
        self.assertRejectedAt(env, "metadata.run_id")

    def test_record_changed_after_hashing_is_named_by_its_hash_path(self):
        # Given the second record edited after its hash was computed
        env = _valid_envelope()
        env["records"][1]["company"] = "Tampered Inc"

        # When / Then the error names records[1].provenance.hash
        self.assertRejectedAt(env, "records[1].provenance.hash")

    def test_tampered_hash_passes_when_hash_checks_are_off(self):
        # Given a record edited after hashing
        env = _valid_envelope()
        env["records"][1]["company"] = "Tampered Inc"

        # When it is validated without hash checks
        result = validate_envelope(env, check_hashes=False)

        # Then it is accepted
        self.assertIs(result, env)

    def test_record_without_provenance_is_named(self):
        # Given a first record that lost its provenance
        env = _valid_envelope()
        del env["records"][0]["provenance"]

        # When / Then the error names records[0].provenance
        self.assertRejectedAt(env, "records[0].provenance")

    def test_malformed_hash_is_named(self):
        # Given a hash that is not a sha256 hex digest
        env = _valid_envelope()
        env["records"][0]["provenance"]["hash"] = "not-a-hash"

        # When / Then the error names records[0].provenance.hash
        self.assertRejectedAt(env, "records[0].provenance.hash")

    def test_created_at_with_a_non_utc_offset_is_named(self):
        # Given created_at in UTC+2
        env = _valid_envelope()
        env["metadata"]["created_at"] = "2024-05-01T12:00:00+02:00"

        # When / Then the error names metadata.created_at
        self.assertRejectedAt(env, "metadata.created_at")

    def test_created_at_without_an_offset_is_named(self):
        # Given a naive created_at
        env = _valid_envelope()
        env["metadata"]["created_at"] = "2024-05-01T12:00:00"

        # When / Then the error names metadata.created_at
        self.assertRejectedAt(env, "metadata.created_at")

    def test_created_at_ending_in_z_is_accepted(self):
        # Given created_at in the Z form
        env = _valid_envelope()
        env["metadata"]["created_at"] = "2024-05-01T12:00:00Z"

        # When / Then it validates
        self.assertIs(validate_envelope(env), env)

    def test_negative_total_count_is_named(self):
        # Given a negative total_count
        env = _valid_envelope()
        env["metadata"]["total_count"] = -1

        # When / Then the error names metadata.total_count
        self.assertRejectedAt(env, "metadata.total_count")

    def test_total_count_given_as_a_string_is_named(self):
        # Given a total_count that is a numeric string
        env = _valid_envelope()
        env["metadata"]["total_count"] = "3"

        # When / Then it is refused rather than coerced
        self.assertRejectedAt(env, "metadata.total_count")

    def test_partial_given_as_a_string_is_named(self):
        # Given partial as the (truthy) string "false"
        env = _valid_envelope()
        env["metadata"]["partial"] = "false"

        # When / Then it is refused rather than coerced
        self.assertRejectedAt(env, "metadata.partial")

    def test_error_item_without_a_code_is_named(self):
        # Given an errors item missing its code
        env = _valid_envelope()
        env["metadata"]["errors"] = [{"message": "boom", "node": "search"}]

        # When / Then the error names metadata.errors[0].code
        self.assertRejectedAt(env, "metadata.errors[0].code")

    def test_non_dict_envelope_is_refused(self):
        # Given a list where an envelope belongs
        not_an_envelope = [{"metadata": {}, "records": []}]

        # When / Then the error names the envelope itself
        error = self.assertRejectedAt(not_an_envelope, "envelope")
        self.assertIn("list", error.reason)

    def test_extra_top_level_key_is_named(self):
        # Given an unexpected top-level key
        env = _valid_envelope()
        env["payload"] = {}

        # When / Then the error names it
        self.assertRejectedAt(env, "payload")

    def test_missing_records_is_named(self):
        # Given an envelope without records
        env = _valid_envelope()
        del env["records"]

        # When / Then the error names records
        self.assertRejectedAt(env, "records")

    def test_set_in_a_record_is_named(self):
        # Given a record holding a set
        env = make_envelope([{"name": "Ada"}], source="test")
        env["records"][0]["tags"] = {"vip"}

        # When / Then the error names the record
        self.assertRejectedAt(env, "records[0]")

    def test_datetime_in_a_record_is_named_even_without_hash_checks(self):
        # Given a record holding a datetime
        env = make_envelope([{"name": "Ada"}, {"name": "Bob"}], source="test")
        env["records"][1]["seen_at"] = datetime.now(timezone.utc)

        # When validated without hash checks
        with self.assertRaises(EnvelopeError) as caught:
            validate_envelope(env, check_hashes=False)

        # Then the error still names the record
        self.assertEqual(caught.exception.field, "records[1]")

    def test_non_serialisable_value_in_provenance_is_named(self):
        # Given a raw_row holding a datetime (provenance is left out of the hash)
        env = make_envelope([{"name": "Ada"}], source="test")
        env["records"][0]["provenance"]["raw_row"] = {"seen_at": datetime.now(timezone.utc)}

        # When / Then the error names the record
        self.assertRejectedAt(env, "records[0]")

    def test_non_serialisable_value_in_metadata_is_named(self):
        # Given an extra metadata key holding a set
        env = _valid_envelope()
        env["metadata"]["strategies"] = {"fuzzy"}

        # When / Then the error names metadata
        self.assertRejectedAt(env, "metadata")

    def test_extra_metadata_and_record_keys_are_allowed(self):
        # Given extra keys in metadata and provenance
        env = make_envelope([{"name": "Ada"}], source="test", next_offset=None, strategies=["fts"])
        env["records"][0]["provenance"]["table"] = "contacts"

        # When / Then it validates
        self.assertIs(validate_envelope(env), env)


class EnvelopeSchemaTests(unittest.TestCase):
    def test_schema_is_json_serialisable(self):
        # Given / When the published schema
        schema = envelope_json_schema()

        # Then it round-trips through JSON
        self.assertEqual(json.loads(json.dumps(schema)), schema)

    def test_schema_requires_metadata_and_records(self):
        # Given / When the published schema
        schema = envelope_json_schema()

        # Then metadata and records are required
        self.assertLessEqual({"metadata", "records"}, set(schema["required"]))

    def test_schema_describes_records_as_an_array(self):
        # Given / When the published schema
        schema = envelope_json_schema()

        # Then records is a declared array property
        self.assertEqual(schema["properties"]["records"]["type"], "array")

    def test_schema_forbids_extra_top_level_keys(self):
        # Given / When the published schema
        schema = envelope_json_schema()

        # Then, like validate_envelope, it refuses unknown top-level keys
        self.assertIs(schema["additionalProperties"], False)

    def test_schema_names_its_draft(self):
        # Given / When the published schema
        schema = envelope_json_schema()

        # Then it declares JSON Schema draft 2020-12
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")

    def test_cli_prints_the_envelope_schema(self):
        # Given the command line interface
        command = [sys.executable, "-m", "agent.cli", "schema", "envelope"]

        # When it is asked for the envelope schema
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

        # Then stdout is exactly the published schema as JSON
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), envelope_json_schema())


if __name__ == "__main__":
    unittest.main()
