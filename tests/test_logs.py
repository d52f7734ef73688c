"""Personal data and secrets never reach a log line."""

from __future__ import annotations

import logging
import unittest

from agent.errors import ConfigurationError, PayloadError
from agent.high_level_agents.orchestrators import DeliveryOrchestrator
from agent.logs import RedactingFilter, get_logger, redact
from agent.settings import get_settings
from tests.support import TempHome


class RedactTest(unittest.TestCase):
    def test_email_local_part_is_masked_and_domain_kept(self) -> None:
        self.assertEqual(redact("to jane.doe@acme.example failed"), "to ***@acme.example failed")

    def test_password_in_a_database_url_is_masked(self) -> None:
        self.assertEqual(redact("postgresql://app:s3cret@db:5432/x"), "postgresql://app:***@db:5432/x")

    def test_key_value_secrets_and_bearer_tokens_are_masked(self) -> None:
        text = redact('api_key=abc123 token: "xyz" Authorization: Bearer eyJhbGciOi.x')
        for secret in ("abc123", "xyz", "eyJhbGciOi"):
            self.assertNotIn(secret, text)

    def test_phone_numbers_are_masked(self) -> None:
        self.assertEqual(redact("call +1 555 0100 now"), "call [phone] now")


class LoggerTest(unittest.TestCase):
    def test_records_from_project_loggers_are_redacted_before_any_handler(self) -> None:
        # Given: a handler with no filter of its own
        logger = get_logger("agent.test_redaction")
        with self.assertLogs(logger, level="INFO") as captured:
            # When
            logger.info("sending to %s with password=%s", "bob@acme.example", "hunter2")
        # Then
        self.assertEqual(captured.records[0].getMessage(), "sending to ***@acme.example with password=***")

    def test_filter_redacts_exception_text(self) -> None:
        try:
            raise ValueError("bad address carol@acme.example")
        except ValueError:
            record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, __import__("sys").exc_info())
        RedactingFilter().filter(record)
        self.assertNotIn("carol@", record.exc_text)

    def test_a_failed_run_logs_no_personal_data(self) -> None:
        # Given
        home = TempHome()
        self.addCleanup(home.cleanup)
        payload = {"records": [{"to": "dave@@acme.example", "subject": "Hi", "body": "x", "lead_id": 1}]}
        # When
        with self.assertLogs("agent.orchestrator", level="WARNING") as captured:
            with self.assertRaises(PayloadError):
                DeliveryOrchestrator(settings=home.settings).run(payload)
        # Then
        self.assertTrue(captured.output)
        self.assertFalse(any("dave@" in line for line in captured.output))


class LogLevelSettingTest(unittest.TestCase):
    def test_lower_case_log_level_is_normalised_to_upper_case(self) -> None:
        # Given / When
        settings = get_settings(log_level="debug")
        # Then
        self.assertEqual(settings.log_level, "DEBUG")

    def test_unknown_log_level_is_a_configuration_error_naming_log_level(self) -> None:
        # When
        with self.assertRaises(ConfigurationError) as caught:
            get_settings(log_level="verbose")
        # Then
        self.assertIn("log_level", str(caught.exception))
