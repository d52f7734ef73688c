"""LLM personalisation of a rendered draft, constrained by a schema and checked before use.

``Personaliser.run`` takes the base draft (the rendered template) and the lead:

1. the lead is scanned for instruction-like text first: a hit refuses the
   lead (``PromptInjection`` naming the field), whatever ``on_error`` says;
2. the model is asked (``LLMClient.complete`` with ``PersonalisedCopy`` as the
   schema) for ``{subject, body, facts_used: [{field, value}]}``;
3. the answer is checked: no instruction-like text (refuses the lead, as 1),
   no placeholder, within the limits, no invented link or address, and every
   fact names a field the model was given whose value holds that text;
4. each fact gets its provenance: the lead record's (source, source_id, hash),
   or for ``enrichment.*`` the matching ``enrichment_provenance`` entry.

An answer that breaks the schema (``LLMError`` after the client's retries), a
failed call, or a failed check in 3 either falls back to the base draft,
recording why (``on_error: fallback``, the default), or fails the lead
(``on_error: fail``).  Without an endpoint configured the client's fallback
answers with the base draft itself, and the provenance says model ``fallback``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.campaigns.model import StepTemplate
from agent.copy.checks import check_instructions, check_lengths, check_links, check_placeholders
from agent.copy.errors import CopyRejected, PromptInjection, UnsupportedFact
from agent.copy.injection import scan_record
from agent.copy.prompt import build_messages, lead_data
from agent.errors import AgentCallError
from agent.llm import LLMClient, LLMError, prompt_hash

__all__ = ["FactUsed", "PersonalisedCopy", "Personalised", "Personaliser", "LeadRef", "verify_facts",
           "lead_texts", "llm_totals"]


class FactUsed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = Field(min_length=1, max_length=200)
    value: str = Field(min_length=1, max_length=1000)


class PersonalisedCopy(BaseModel):
    """The schema a model's answer must validate against."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1, max_length=900)
    body: str = Field(min_length=1, max_length=100_000)
    facts_used: list[FactUsed] = Field(max_length=30)


@dataclass(frozen=True)
class Personalised:
    """What the draft is made of: its text, the facts behind it, and the model call (``llm``)."""

    subject: str
    body: str
    facts: list[dict[str, Any]]
    llm: dict[str, Any]
    calls: int = 0  # requests that reached an endpoint (0: cached or no endpoint)
    fallback_reason: dict[str, Any] | None = field(default=None)


@dataclass(frozen=True)
class LeadRef:
    """The lead record's identity, for the facts' provenance."""

    hash: str
    source: str | None = None
    source_id: str | None = None


class Personaliser:
    """One personalisation call per draft through ``client``."""

    temperature = 0.0

    def __init__(self, client: LLMClient) -> None:
        self.client = client

    def run(self, *, lead: Mapping[str, Any], ref: LeadRef, subject: str, body: str,
            template: StepTemplate) -> Personalised:
        options = template.personalise
        scan_record(lead)  # refuses the lead before any model sees it
        data = lead_data(lead, options.fields)
        messages = build_messages(subject=subject, body=body, data=data, options=options, limits=template.limits)
        max_tokens = 400 + 4 * min(options.max_words, template.limits.body_words)
        base = PersonalisedCopy(subject=subject, body=body, facts_used=[])
        try:
            result = self.client.complete(messages, schema=PersonalisedCopy, temperature=self.temperature,
                                          max_tokens=max_tokens, fallback=lambda: base)
        except LLMError as exc:
            return self._fall_back(options.on_error, exc, subject, body, messages, max_tokens, calls=1,
                                   field=exc.field or "response", reason=exc.reason, usage=exc.usage, cost=exc.cost)
        except AgentCallError as exc:  # the breaker is open, or no slot came in time: nothing was asked
            return self._fall_back(options.on_error, exc, subject, body, messages, max_tokens, calls=0,
                                   field="call", reason=str(exc), usage={}, cost=0.0)
        calls = 0 if result.fallback or result.cached else 1
        call = {**result.provenance(), "calls": calls, "outcome": "fallback" if result.fallback else "personalised",
                "reason": None}
        if result.fallback:  # no endpoint configured: the base draft is the deterministic answer
            reason = {"code": "llm_not_configured", "field": "settings.llm_base_url",
                      "message": "no LLM endpoint is configured; the template's draft is used"}
            return Personalised(subject, body, [], {**call, "reason": reason}, calls, reason)
        answer: PersonalisedCopy = result.parsed
        try:
            facts = self._check(answer, lead, data, ref, subject, body, template)
        except PromptInjection:
            raise  # the model was steered: this lead gets no draft at all
        except CopyRejected as exc:
            if options.on_error == "fail":
                raise
            reason = {"code": exc.code, "field": exc.field, "message": exc.reason}
            return Personalised(subject, body, [], {**call, "outcome": "fallback", "reason": reason}, calls, reason)
        return Personalised(answer.subject.strip(), answer.body.strip(), facts, call, calls)

    def _check(self, answer: PersonalisedCopy, lead: Mapping[str, Any], data: Mapping[str, Any], ref: LeadRef,
               subject: str, body: str, template: StepTemplate) -> list[dict[str, Any]]:
        out_subject, out_body = answer.subject.strip(), answer.body.strip()
        base_text = f"{subject}\n{body}"
        check_instructions(out_subject, "llm.subject", already=base_text)
        check_instructions(out_body, "llm.body", already=base_text)
        check_placeholders(out_subject, "llm.subject")
        check_placeholders(out_body, "llm.body")
        check_lengths(out_subject, out_body, template.limits, fields=("llm.subject", "llm.body"),
                      max_words=template.personalise.max_words)
        # Links the base draft has, or the lead data the model was shown; never one from fields it was not
        # shown, nor from fetched website text (a page could plant a link for a model to repeat).
        allowed = [base_text, *lead_texts(data, skip=_UNTRUSTED_LINK_SOURCES)]
        check_links(out_subject, allowed, "llm.subject")
        check_links(out_body, allowed, "llm.body")
        return verify_facts(answer.facts_used, lead, data, ref)

    def _fall_back(self, on_error: str, exc: Exception, subject: str, body: str, messages: list[dict[str, str]],
                   max_tokens: int, *, calls: int, field: str, reason: str, usage: Mapping[str, int],
                   cost: float) -> Personalised:
        if on_error == "fail":
            raise exc
        settings = self.client.settings
        model = settings.llm_model or "fallback"
        key = prompt_hash(model, messages, PersonalisedCopy, self.temperature, max_tokens, settings.llm_base_url)
        why = {"code": getattr(exc, "code", "llm_failed"), "field": f"llm.{field}", "message": reason}
        call = {"model": model, "prompt_hash": key, "fallback": True, "cached": False, "usage": dict(usage),
                "cost": cost, "calls": calls, "outcome": "fallback", "reason": why}
        return Personalised(subject, body, [], call, calls, why)


def llm_totals(drafts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """What personalising ``drafts`` asked and spent, from their provenance: ``{calls, prompt_tokens,
    completion_tokens, total_tokens, cost, model, models, personalised, fallbacks}`` (for a batch's
    metadata; drafts made without personalisation count for nothing)."""
    totals: dict[str, Any] = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                              "cost": 0.0, "personalised": 0, "fallbacks": 0}
    models: set[str] = set()
    for draft in drafts:
        call = (draft.get("provenance") or {}).get("llm")
        if not isinstance(call, Mapping):
            continue
        usage = call.get("usage") or {}
        totals["calls"] += int(call.get("calls") or 0)
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            totals[name] += int(usage.get(name) or 0)
        totals["cost"] = round(totals["cost"] + float(call.get("cost") or 0.0), 8)
        totals["personalised" if call.get("outcome") == "personalised" else "fallbacks"] += 1
        models.add(str(call.get("model")))
    totals["models"] = sorted(models)
    totals["model"] = totals["models"][0] if len(models) == 1 else None
    return totals


def verify_facts(facts: list[FactUsed], lead: Mapping[str, Any], data: Mapping[str, Any],
                 ref: LeadRef) -> list[dict[str, Any]]:
    """Each fact as ``{field, value, provenance}``; one that names a field the model was not given, or
    whose value is not in that field, is an ``UnsupportedFact``."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, fact in enumerate(facts):
        name = fact.field.strip()
        name = name[5:] if name.startswith("lead.") else name
        found, value = _resolve(data, name)
        if not found:
            raise UnsupportedFact(f"llm.facts_used[{index}].field",
                                  f"names {name!r}, which is not a field of the lead data the model was given")
        wanted = _squash(fact.value)
        if not wanted or wanted not in _squash(_text(_full(lead, name, value))):
            raise UnsupportedFact(f"llm.facts_used[{index}].value", f"{_clip(fact.value)!r} does not occur in "
                                                                    f"the lead's {name!r}")
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        out.append({"field": name, "value": fact.value.strip(), "provenance": _provenance(lead, name, ref)})
    return out


_UNTRUSTED_LINK_SOURCES = frozenset({"website_text", "website_title"})


def lead_texts(lead: Mapping[str, Any], *, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every string in the lead record (provenance and ``skip`` keys aside): where an allowed link may
    come from."""
    texts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if key not in ("provenance", "enrichment_provenance") and key not in skip:
                    walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(lead)
    return texts


def _resolve(data: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    if name in data:  # a top-level field, or a dotted name a campaign's ``fields`` picked
        return True, data[name]
    value: Any = data
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _full(lead: Mapping[str, Any], name: str, shown: Any) -> Any:
    """The untrimmed value behind what the model was shown (the prompt cuts long values)."""
    value: Any = lead
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return shown
        value = value[part]
    return value


def _provenance(lead: Mapping[str, Any], name: str, ref: LeadRef) -> dict[str, Any]:
    lead_prov = {"kind": "lead", "source": ref.source, "source_id": ref.source_id, "hash": ref.hash}
    if not name.startswith("enrichment."):
        return lead_prov
    key = name.split(".")[1]
    entries = lead.get("enrichment_provenance")
    entry: Any = None
    if isinstance(entries, Mapping):
        entry = entries.get(key)
    elif isinstance(entries, list):
        entry = next((e for e in entries if isinstance(e, Mapping) and e.get("field") in (key, name)), None)
    source = entry.get("source") if isinstance(entry, Mapping) else None
    source_id = (entry.get("source_id") or entry.get("url")) if isinstance(entry, Mapping) else None
    return {"kind": "enrichment", "source": source, "source_id": source_id, "hash": ref.hash, "entry": entry}


def _text(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(f"{k} {_text(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def _clip(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[: size - 3] + "..."
