"""Prompt injection: instruction-like text where only data belongs.

Lead records come from imports, web pages and enrichers, so any field may
carry text written to steer a model ("ignore previous instructions", "you are
now...", a ``system:`` line, chat-template tags).  ``find_instruction`` spots
such a phrase; ``scan_record`` walks a lead record (nested dicts and lists,
keys too) and raises ``PromptInjection`` naming the field.  The same detector
reads a model's answer, where such text means the model was steered.

The patterns are few and specific on purpose: a CRM note saying "CRM system:
Salesforce" or "she will act as our champion" must stay a lead, so role tags
count only at the start of a line and a verb like "ignore" only next to what
an instruction would target.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

from agent.copy.errors import PromptInjection

__all__ = ["find_instruction", "find_instructions", "scan_record", "normalise"]

# Between a verb and its object: up to four words ("ignore all of the previous instructions").
_GAP = r"(?:[\s,:;'\"-]+[\w']+){0,4}?[\s,:;'\"-]+"
_PATTERNS = tuple(re.compile(p, re.MULTILINE) for p in (
    # Overriding what came before.
    rf"\b(?:ignore|disregard|forget|override|bypass)\b{_GAP}(?:instructions?|prompts?|rules|guidelines|directions"
    r"|directives|system messages?|context)\b",
    rf"\b(?:ignore|disregard|forget)\b{_GAP}(?:above|previous|prior|earlier|preceding)\b",
    r"\b(?:ignore|disregard)\s+(?:all|everything)\b",
    r"\bdo not follow\b(?:\s+\w+){0,3}?\s+(?:instructions?|rules|prompt)\b",
    r"\bnew (?:instructions?|rules|task)\s*:",
    # Giving the model a new identity.
    r"\byou are now\b",
    r"\bfrom now on,?\s+(?:you|act|respond|answer|reply)\b",
    r"\bpretend (?:to be|you are|that you)\b",
    r"\byour (?:new|real|true) (?:role|instructions?|task|purpose|goal)\b",
    r"\bact as (?:an? )?(?:ai|assistant|language model|chatbot|llm|system|developer)\b",
    r"\b(?:jailbreak|developer mode|dan mode)\b",
    # Asking for the prompt, or steering the output.
    rf"\b(?:reveal|print|show|repeat|output|leak)\b{_GAP}(?:system prompt|instructions|your prompt)\b",
    r"\bsystem prompt\b",
    r"\binstead,?\s+(?:write|say|respond|reply|output|include|add|insert)\b",
    # Chat roles and template tags.
    r"^\s*(?:system|assistant|developer|user|human)\s*:",
    r"<\|[a-z_]{2,20}\|>",
    r"\[/?inst\]",
    r"<<\s*/?sys\s*>>",
    r"</?\s*(?:system|assistant|instructions?|prompt)\s*>",
    r"#{2,}\s*(?:instruction|system|prompt)s?\b",
))
# All of them in one pattern: most text has none of them, and one pass says so.
_ANY = re.compile("|".join(f"(?:{p.pattern})" for p in _PATTERNS), re.MULTILINE)
# Zero-width and other invisible characters that could split a phrase past the patterns.
_INVISIBLE = {ord(c): None for c in "\u200b\u200c\u200d\u2060\ufeff\u00ad"}


def normalise(text: str) -> str:
    """``text`` compatibility-folded (NFKC: full-width letters become ASCII), invisible characters
    dropped, case-folded, spaces within a line collapsed (line breaks kept: role tags are per line)."""
    folded = unicodedata.normalize("NFKC", text).translate(_INVISIBLE).casefold()
    return "\n".join(re.sub(r"[^\S\n]+", " ", line).strip() for line in folded.splitlines())


def find_instruction(text: str) -> str | None:
    """The first instruction-like phrase in ``text`` (normalised), or None."""
    if not text:
        return None
    folded = normalise(text)
    if _ANY.search(folded) is None:
        return None
    for pattern in _PATTERNS:
        found = pattern.search(folded)
        if found is not None:
            return found.group(0).strip()
    return None


def find_instructions(text: str) -> list[str]:
    """Every instruction-like phrase in ``text`` (normalised), pattern by pattern."""
    folded = normalise(text) if text else ""
    if _ANY.search(folded) is None:
        return []
    return [found.group(0).strip() for pattern in _PATTERNS for found in pattern.finditer(folded)]


def scan_record(record: Mapping[str, Any], *, prefix: str = "lead",
                skip: frozenset[str] = frozenset({"provenance", "enrichment_provenance"})) -> None:
    """Raise ``PromptInjection`` naming the first field of ``record`` (or a key) that reads as an
    instruction; ``skip`` names top-level keys that are bookkeeping, not data given to a model."""
    for path, text in _texts(record, prefix, skip):
        phrase = find_instruction(text)
        if phrase is not None:
            raise PromptInjection(path, f"reads as an instruction to a model ({_quote(phrase)}); "
                                        "the lead is not personalised or drafted")


def _texts(value: Any, path: str, skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if key in skip:
                continue
            yield path, str(key)  # keys reach the model too (the data block is JSON)
            yield from _texts(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _texts(item, f"{path}[{index}]")


def _quote(phrase: str) -> str:
    return repr(phrase if len(phrase) <= 60 else phrase[:57] + "...")
