"""``LLMClient`` against a local OpenAI-compatible server (real HTTP, scripted answers)."""

from __future__ import annotations

import json
import logging
import unittest

from pydantic import BaseModel, Field

from agent.dispatch import Dispatcher
from agent.errors import CircuitOpen, ConfigurationError, InvalidInput
from agent.llm import LLMClient, LLMError
from agent.settings import get_settings
from tests.llm_server import FakeLLM, answer, stall, status
from tests.support import requires_real_services

KEY = "sk-test-secret-0123456789"
ASK = [{"role": "system", "content": "You write subject lines."}, {"role": "user", "content": "Acme, fintech"}]


class Subject(BaseModel):
    subject: str = Field(min_length=3, max_length=80)
    facts: list[str]


class LLMClientTest(unittest.TestCase):
    def serve(self, *steps: dict) -> FakeLLM:
        fake = FakeLLM(*steps).start()
        self.addCleanup(fake.stop)
        return fake

    def client(self, fake: FakeLLM | None, **settings: object) -> tuple[LLMClient, list[float]]:
        values = {"llm_base_url": fake.url if fake else None, "llm_model": "fake-1" if fake else None,
                  "llm_api_key": KEY, "llm_timeout": 0.5, "llm_max_attempts": 3,
                  "llm_price_prompt_per_mtok": 2.0, "llm_price_completion_per_mtok": 8.0, **settings}
        slept: list[float] = []
        return LLMClient(get_settings(**values), sleep=slept.append), slept

    def test_a_structured_answer_is_validated_and_its_tokens_and_cost_counted(self) -> None:
        # Given an endpoint that answers with JSON
        fake = self.serve(answer(json.dumps({"subject": "Acme and pipeline quality", "facts": ["fintech"]}),
                                 prompt_tokens=100, completion_tokens=20))
        client, _ = self.client(fake)
        # When a structured answer is asked for
        result = client.complete(ASK, schema=Subject)
        # Then it is the validated model, with its usage and cost
        self.assertEqual(result.parsed, Subject(subject="Acme and pipeline quality", facts=["fintech"]))
        self.assertEqual(result.usage, {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120})
        self.assertAlmostEqual(result.cost, 100 * 2.0 / 1e6 + 20 * 8.0 / 1e6)
        self.assertEqual((result.model, result.attempts, result.fallback, result.cached), ("fake-1", 1, False, False))
        # And the request carried the model, the messages, the schema and the key
        [sent] = fake.requests
        self.assertEqual((sent["model"], sent["messages"]), ("fake-1", ASK))
        self.assertEqual(sent["response_format"]["json_schema"]["schema"], Subject.model_json_schema())
        self.assertEqual(fake.headers[0]["authorization"], f"Bearer {KEY}")

    def test_a_server_error_is_retried_with_backoff(self) -> None:
        fake = self.serve(status(503), status(429), answer("Hello"))
        client, slept = self.client(fake)
        result = client.complete(ASK)
        self.assertEqual((result.text, result.attempts, len(fake.requests)), ("Hello", 3, 3))
        self.assertEqual(len(slept), 2)
        self.assertTrue(all(delay > 0 for delay in slept))

    def test_a_timeout_is_retried(self) -> None:
        # Given an endpoint whose first answer takes far longer than the client waits
        fake = self.serve(stall(60, answer("late")), answer("on time"))
        client, _ = self.client(fake, llm_timeout=0.3)
        # When / Then the second attempt answers
        self.assertEqual(client.complete(ASK).text, "on time")
        self.assertEqual(len(fake.requests), 2)

    def test_a_refusal_that_a_retry_cannot_cure_fails_at_once(self) -> None:
        fake = self.serve(status(400), answer("never"))
        client, slept = self.client(fake)
        with self.assertRaises(LLMError) as caught:
            client.complete(ASK)
        self.assertIn("400", str(caught.exception))
        self.assertEqual((len(fake.requests), slept), (1, []))

    def test_malformed_json_is_retried_then_refused_naming_the_field(self) -> None:
        # Given an endpoint that answers with prose, then with JSON missing a field, every time
        fake = self.serve(answer("Sure! Here is a subject line."), answer(json.dumps({"subject": "Hi Acme"})))
        client, _ = self.client(fake)
        # When a structured answer is asked for
        with self.assertRaises(LLMError) as caught:
            client.complete(ASK, schema=Subject)
        # Then after every attempt the last fault is named
        self.assertEqual(caught.exception.field, "response.facts")
        self.assertEqual(len(fake.requests), 3)

    def test_the_same_prompt_is_paid_for_once(self) -> None:
        fake = self.serve(answer("Hello"))
        client, _ = self.client(fake)
        first = client.complete(ASK)
        again = client.complete(ASK)
        other = client.complete(ASK, temperature=0.7)
        self.assertEqual((again.text, again.cached, again.cost, again.prompt_hash), ("Hello", True, 0.0,
                                                                                    first.prompt_hash))
        self.assertNotEqual(other.prompt_hash, first.prompt_hash)
        self.assertEqual(len(fake.requests), 2)

    def test_without_an_endpoint_the_fallback_answers_and_says_so(self) -> None:
        client, _ = self.client(None)
        self.assertFalse(client.configured)
        result = client.complete(ASK, schema=Subject, fallback=lambda: Subject(subject="Acme and you", facts=[]))
        self.assertEqual((result.fallback, result.model, result.parsed.subject), (True, "fallback", "Acme and you"))
        self.assertEqual(result.provenance()["fallback"], True)
        with self.assertRaises(ConfigurationError):
            client.complete(ASK)

    def test_calls_go_through_the_dispatchers_limits(self) -> None:
        # Given a dispatcher whose breaker opens after two failures of the llm agent
        fake = self.serve(status(500))
        dispatcher = Dispatcher()
        dispatcher.configure("llm", {"breaker": {"failures": 2, "reset_after": 60}})
        client = LLMClient(get_settings(llm_base_url=fake.url, llm_model="fake-1", llm_max_attempts=5),
                           dispatcher=dispatcher, sleep=lambda s: None)
        # When the endpoint keeps failing
        with self.assertRaises(CircuitOpen):
            client.complete(ASK)
        # Then the breaker stopped the calls before every attempt was spent
        self.assertEqual(dispatcher.stats("llm").breaker, "open")
        self.assertLess(len(fake.requests), 5)

    def test_bad_messages_are_refused_naming_the_field_and_nothing_is_sent(self) -> None:
        fake = self.serve(answer("x"))
        client, _ = self.client(fake)
        with self.assertRaises(InvalidInput) as caught:
            client.complete([{"role": "user", "content": 3}])
        self.assertEqual(caught.exception.field, "messages[0].content")
        self.assertEqual(fake.requests, [])

    def test_refusals_that_are_the_requests_fault_do_not_open_the_breaker(self) -> None:
        fake = self.serve(status(400))
        dispatcher = Dispatcher()
        dispatcher.configure("llm", {"breaker": {"failures": 2, "reset_after": 60}})
        client = LLMClient(get_settings(llm_base_url=fake.url, llm_model="fake-1"), dispatcher=dispatcher,
                           sleep=lambda s: None)
        for _ in range(3):
            with self.assertRaises(LLMError):
                client.complete(ASK)
        self.assertEqual((dispatcher.stats("llm").breaker, len(fake.requests)), ("closed", 3))

    def test_an_answer_cut_off_at_max_tokens_is_not_kept_and_the_cap_is_part_of_the_key(self) -> None:
        # Given an endpoint whose first answer stops at the token cap
        fake = self.serve(answer("Hel", finish_reason="length"), answer("Hello there"))
        client, _ = self.client(fake)
        capped = client.complete(ASK, max_tokens=1)
        # When the same prompt is asked again, capped and not
        again = client.complete(ASK, max_tokens=1)
        whole = client.complete(ASK)
        # Then the cut-off answer was not kept, and the uncapped one is a different prompt
        self.assertEqual((capped.text, again.cached, whole.text, whole.cached), ("Hel", False, "Hello there", False))
        self.assertNotEqual(capped.prompt_hash, whole.prompt_hash)
        self.assertEqual(len(fake.requests), 3)

    def test_the_key_never_reaches_logs_or_errors(self) -> None:
        fake = self.serve(status(401))
        client, _ = self.client(fake)
        with self.assertLogs("agent", level="DEBUG") as logs, self.assertRaises(LLMError) as caught:
            logging.getLogger("agent.llm").debug("calling")
            client.complete(ASK)
        self.assertNotIn(KEY, str(caught.exception))
        self.assertNotIn(KEY, "\n".join(logs.output))
        self.assertNotIn(KEY, repr(client.settings))
        # and the SDK's own exception (which holds the request, key header and all) is not chained on
        chained, seen = caught.exception, 0
        while chained is not None and seen < 10:
            self.assertNotIn("openai", type(chained).__module__)
            chained, seen = chained.__cause__ or chained.__context__, seen + 1



class SqlCacheSuite:
    """The answers kept in the database: shared by every client on it, for as long as kept."""

    url: str

    def cache(self) -> object:
        from agent.llm import SqlCache

        cache = SqlCache(self.url)
        self.addCleanup(cache.db.engine.dispose)  # type: ignore[attr-defined]
        return cache

    def test_a_new_client_on_the_same_database_pays_for_the_prompt_once(self) -> None:
        # Given an answer paid for by one client (one worker)
        fake = FakeLLM(answer(json.dumps({"subject": "Acme and pipeline quality", "facts": ["fintech"]}))).start()
        self.addCleanup(fake.stop)
        settings = get_settings(llm_base_url=fake.url, llm_model="fake-1")
        first = LLMClient(settings, cache=self.cache()).complete(ASK, schema=Subject)
        # When another client with its own handle on the database asks the same
        again = LLMClient(settings, cache=self.cache()).complete(ASK, schema=Subject)
        # Then the kept answer comes back, validated, and the endpoint was asked once
        self.assertEqual((again.cached, again.parsed, again.usage, again.cost), (True, first.parsed, {}, 0.0))
        self.assertEqual(len(fake.requests), 1)

    def test_a_kept_answer_that_no_longer_validates_is_replaced(self) -> None:
        from agent.llm.cache import Cached

        # Given a kept answer under a prompt's key that the schema now refuses
        fake = FakeLLM(answer(json.dumps({"subject": "Acme and pipeline quality", "facts": []}))).start()
        self.addCleanup(fake.stop)
        client = LLMClient(get_settings(llm_base_url=fake.url, llm_model="fake-1"), cache=self.cache())
        first = client.complete(ASK, schema=Subject)
        client.cache.put(first.prompt_hash, Cached("fake-1", '{"subject": "x"}', {}, 0.0))
        # When it is asked twice more
        client.complete(ASK, schema=Subject)
        last = client.complete(ASK, schema=Subject)
        # Then the endpoint answered once more, and that answer replaced the stale one
        self.assertTrue(last.cached)
        self.assertEqual(len(fake.requests), 2)

    def test_prune_forgets_old_answers(self) -> None:
        from datetime import datetime, timedelta, timezone

        from agent.llm.cache import Cached

        cache = self.cache()
        cache.put("k1", Cached("m", "hello", {"total_tokens": 3}, 0.001))
        later = datetime.now(timezone.utc) + timedelta(days=31)
        self.assertEqual(cache.prune(older_than=timedelta(days=30), now=later), 1)
        self.assertIsNone(cache.get("k1"))


class SQLiteSqlCacheTest(SqlCacheSuite, unittest.TestCase):
    def setUp(self) -> None:
        from tests.support import TempHome

        home = TempHome()
        self.addCleanup(home.cleanup)
        self.url = str(home.settings.resolved_database_url)


@requires_real_services()
class PostgresSqlCacheTest(SqlCacheSuite, unittest.TestCase):
    def setUp(self) -> None:
        from tests.support import PostgresSchema

        schema = PostgresSchema()
        self.addCleanup(schema.drop)
        self.url = schema.url


if __name__ == "__main__":
    unittest.main()
