"""``LLMClient``: one call to any OpenAI-compatible chat endpoint, made safe to build on.

Through the ``openai`` SDK (base URL, model and key from settings), with:

- a timeout per attempt, and retries with jittered exponential backoff for
  what a retry can cure (timeouts, lost connections, 408/409/429 and 5xx
  answers); any other refusal fails at once;
- structured output: given a pydantic model, the answer must be a JSON
  object that validates against it (asked for with a JSON Schema
  ``response_format``); an answer that breaks it is retried, then refused
  with an ``LLMError`` naming the first bad field;
- token and cost accounting on every result (``usage``, ``cost``), with
  prices per million tokens from settings;
- a response cache keyed by the hash of everything that shapes the answer
  (model, messages, schema, temperature): the same prompt is paid for once
  (``agent.llm.cache``: in the process, or in the database for every worker);
- every attempt through the Dispatcher's limits for the agent ``llm``
  (concurrency, rate, circuit breaker);
- without an endpoint configured, a caller's deterministic ``fallback``
  answers instead, and the result says so (``fallback=True``, model
  ``"fallback"``): provenance never claims a model that did not run.

The API key never reaches a log or an error message.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from agent.dispatch import Dispatcher
from agent.engine.policy import compute_backoff
from agent.errors import AgentCallError, AgentError, ConfigurationError, InvalidInput
from agent.llm.cache import Cached, LLMCache, MemoryCache
from agent.logs import get_logger, redact
from agent.settings import Settings, get_settings
from agent.validation import first_error

__all__ = ["LLMClient", "LLMResult", "LLMError", "prompt_hash", "AGENT"]

log = get_logger("agent.llm")

AGENT = "llm"  # the Dispatcher's name for these calls
_RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class LLMError(AgentCallError):
    """The model could not give a usable answer (after the retries that could help)."""

    code = "llm_failed"

    def __init__(self, reason: str, *, field: str | None = None, usage: Mapping[str, int] | None = None,
                 cost: float = 0.0) -> None:
        self.field, self.reason = field, reason
        self.usage, self.cost = dict(usage or {}), cost  # what the failed call still spent
        super().__init__(AGENT, f"{field}: {reason}" if field else reason)


class _Refused(InvalidInput):
    """An answer a retry cannot cure (400, 401, 404, 422 ...): the request's fault, not the endpoint's
    health, so the Dispatcher's breaker does not count it (it is raised inside the slot)."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__("request", f"the endpoint answered {status}")


@dataclass(frozen=True)
class LLMResult:
    """An answer: its ``text``, the validated ``parsed`` model (structured calls), what it cost."""

    text: str
    parsed: Any
    model: str
    prompt_hash: str
    usage: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    attempts: int = 0
    cached: bool = False
    fallback: bool = False

    def provenance(self) -> dict[str, Any]:
        """What a record made from this answer keeps about it."""
        return {"model": self.model, "prompt_hash": self.prompt_hash, "fallback": self.fallback,
                "cached": self.cached, "usage": dict(self.usage), "cost": self.cost}


def prompt_hash(model: str, messages: Sequence[Mapping[str, Any]], schema: type[BaseModel] | None,
                temperature: float, max_tokens: int | None = None, endpoint: str | None = None) -> str:
    """sha256 of everything that shapes the answer (the endpoint too: two servers may serve different
    models under one name): the response cache's key."""
    shape = None if schema is None else schema.model_json_schema()
    body = json.dumps({"model": model, "messages": list(messages), "schema": shape, "temperature": temperature,
                       "max_tokens": max_tokens, "endpoint": endpoint},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class LLMClient:
    """Chat completions from the configured endpoint (``llm_base_url``, ``llm_model``, ``llm_api_key``)."""

    def __init__(self, settings: Settings | None = None, *, dispatcher: Dispatcher | None = None,
                 cache: LLMCache | None = None, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        """``cache``: where answers are kept (default: this process's ``MemoryCache``; a
        ``SqlCache`` shares them between workers and runs)."""
        self.settings = settings or get_settings()
        self.dispatcher = dispatcher
        self.cache: LLMCache = cache if cache is not None else MemoryCache()
        self._sleep, self._rng = sleep, rng or random.Random()
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether an endpoint and a model are set (else only a fallback can answer)."""
        return bool(self.settings.llm_base_url and self.settings.llm_model)

    def complete(self, messages: Sequence[Mapping[str, Any]], *, schema: type[BaseModel] | None = None,
                 temperature: float = 0.0, max_tokens: int | None = None,
                 fallback: Callable[[], str | BaseModel] | None = None) -> LLMResult:
        """One answer to ``messages``; with ``schema`` its JSON validated as that model.

        Without an endpoint configured, ``fallback()`` answers (a string, or an
        instance of ``schema``); with none, ``ConfigurationError``.
        """
        checked = _check_messages(messages)
        model = self.settings.llm_model or "fallback"
        key = prompt_hash(model, checked, schema, temperature, max_tokens, self.settings.llm_base_url)
        if not self.configured:
            if fallback is None:
                raise ConfigurationError("setting llm_base_url / llm_model: no LLM endpoint is configured "
                                         "and this call has no fallback")
            return _fallback_result(fallback(), schema, key)
        hit = self._cached(key, schema)
        if hit is not None:
            return hit
        result, complete = self._call(checked, schema, temperature, max_tokens, key)
        if complete:  # an answer cut off at max_tokens is not kept
            try:
                self.cache.put(key, Cached(result.model, result.text, dict(result.usage), result.cost))
            except AgentError as exc:  # a cache is a saving, never a reason to fail the call
                log.warning("llm answer not cached: %s", redact(str(exc)))
        return result

    def _cached(self, key: str, schema: type[BaseModel] | None) -> LLMResult | None:
        try:
            kept = self.cache.get(key)
        except AgentError as exc:
            log.warning("llm cache not read: %s", redact(str(exc)))
            return None
        if kept is None:
            return None
        parsed = None
        if schema is not None:
            try:
                parsed = schema.model_validate_json(kept.text)
            except ValidationError:
                return None  # kept for another shape of the same schema name: asked again
        # Paid for once, when it was kept: a hit spends no tokens and costs nothing now.
        return LLMResult(kept.text, parsed, kept.model, key, {}, 0.0, 0, cached=True)

    # -- the calls -----------------------------------------------------------------------------
    def _call(self, messages: list[dict[str, Any]], schema: type[BaseModel] | None, temperature: float,
              max_tokens: int | None, key: str) -> tuple[LLMResult, bool]:
        """The answer, and whether it is whole (not cut off at ``max_tokens``)."""
        settings = self.settings
        attempts = settings.llm_max_attempts
        request: dict[str, Any] = {"model": settings.llm_model, "messages": messages, "temperature": temperature}
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if schema is not None:
            request["response_format"] = {"type": "json_schema", "json_schema": {
                "name": schema.__name__, "schema": schema.model_json_schema(), "strict": False}}
        usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        last: LLMError | None = None
        for attempt in range(1, attempts + 1):
            response, failure, refused = self._attempt(request)  # never raises the SDK's own errors
            if refused is not None:
                raise LLMError(f"the endpoint answered {refused}", usage=usage, cost=self._cost(usage))
            if failure is not None:
                last = failure
            else:
                _add_usage(usage, getattr(response, "usage", None))
                try:
                    text, parsed = _answer(response, schema)
                except LLMError as exc:
                    last = exc  # a malformed answer: the next attempt may be well-formed
                else:
                    whole = _finish_reason(response) != "length"
                    return LLMResult(text, parsed, str(getattr(response, "model", None) or settings.llm_model),
                                     key, usage, self._cost(usage), attempt), whole
            if attempt < attempts:
                delay = compute_backoff(attempt, base=settings.llm_retry_base, multiplier=2.0, max_delay=30.0,
                                        jitter=0.5, draw=self._rng.random())
                log.warning("llm call failed (attempt %d of %d): %s; retrying in %.2f s", attempt, attempts,
                            redact(str(last)), delay)
                self._sleep(delay)
        assert last is not None
        raise LLMError(f"{last.reason} (after {attempts} attempts)", field=last.field, usage=usage,
                       cost=self._cost(usage))

    def _attempt(self, request: dict[str, Any]) -> tuple[Any, LLMError | None, int | None]:
        """One attempt through the Dispatcher: ``(response, retryable failure, refused status)``.

        The SDK's exceptions end here: they hold the request, key header and
        all, and must not ride along as the context of an error we raise.
        """
        import openai

        client = self._sdk()
        try:
            if self.dispatcher is None:
                return client.chat.completions.create(**request), None, None
            with self.dispatcher.slot(AGENT):
                try:
                    return client.chat.completions.create(**request), None, None
                except openai.APIStatusError as exc:
                    if exc.status_code not in _RETRY_STATUS:
                        raise _Refused(exc.status_code) from None  # not the endpoint's health: no breaker
                    raise
        except _Refused as exc:
            status = exc.status
        except openai.APIStatusError as exc:
            if exc.status_code not in _RETRY_STATUS:
                status = exc.status_code
            else:
                return None, LLMError(f"the endpoint answered {exc.status_code}"), None
        except openai.APITimeoutError:
            return None, LLMError("timed out"), None
        except openai.APIConnectionError:
            return None, LLMError("could not reach the endpoint"), None
        return None, None, status

    def _sdk(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = self.settings.llm_api_key
                self._client = openai.OpenAI(
                    base_url=self.settings.llm_base_url, timeout=self.settings.llm_timeout, max_retries=0,
                    # A local endpoint may take no key; the SDK insists on one.
                    api_key=key.get_secret_value() if key is not None else "not-needed")
            return self._client

    def close(self) -> None:
        """Close the SDK's connections (a client is usable again afterwards)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _cost(self, usage: Mapping[str, int]) -> float:
        s = self.settings
        return round(usage.get("prompt_tokens", 0) * s.llm_price_prompt_per_mtok / 1e6
                     + usage.get("completion_tokens", 0) * s.llm_price_completion_per_mtok / 1e6, 8)


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidInput("messages", "must be a non-empty list of {role, content}")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ("system", "user", "assistant"):
            raise InvalidInput(f"messages[{index}].role", "must be system, user or assistant")
        if not isinstance(message.get("content"), str):
            raise InvalidInput(f"messages[{index}].content", "must be a string")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _answer(response: Any, schema: type[BaseModel] | None) -> tuple[str, Any]:
    try:
        text = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise LLMError("has no message", field="response") from None
    if not isinstance(text, str):
        raise LLMError("has no text", field="response")
    if schema is None:
        return text, None
    try:
        data = json.loads(text)
    except ValueError:
        raise LLMError("is not JSON", field="response") from None
    try:
        return text, schema.model_validate(data)
    except ValidationError as exc:
        path, reason = first_error(exc)
        raise LLMError(reason, field=f"response.{path}" if path else "response") from None


def _finish_reason(response: Any) -> str | None:
    try:
        return response.choices[0].finish_reason
    except (AttributeError, IndexError, TypeError):
        return None


def _add_usage(total: dict[str, int], usage: Any) -> None:
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, name, None) if usage is not None else None
        if isinstance(value, int):
            total[name] += value


def _fallback_result(answer: str | BaseModel, schema: type[BaseModel] | None, key: str) -> LLMResult:
    if schema is not None:
        if not isinstance(answer, schema):
            raise InvalidInput("fallback", f"must return a {schema.__name__}")
        return LLMResult(answer.model_dump_json(), answer, "fallback", key, fallback=True)
    if not isinstance(answer, str):
        raise InvalidInput("fallback", "must return a string")
    return LLMResult(answer, None, "fallback", key, fallback=True)
