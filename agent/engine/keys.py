"""Keys: a map item's stable step key, a merge's de-duplication key, and user code run safely."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from agent.engine.flow import Node
from agent.envelope import PROVENANCE, _canonical, record_hash
from agent.errors import AgentCallError, AgentError, FlowError

__all__ = ["item_key", "dedupe", "user_code"]


def item_key(node: Node, item: Any, index: int) -> str:
    key = node.item_key
    if key is None:
        # Derived from the content, so a re-run finds the same key whatever order the items
        # come in (a list position would restore another item's result).
        if isinstance(item, Mapping) and isinstance(item.get(PROVENANCE), Mapping):
            claimed = item[PROVENANCE].get("hash")
            # Only a hash that still matches the content: an edited record is keyed by what it is now.
            if isinstance(claimed, str) and claimed == _content_hash(item):
                return claimed[:32]
        try:
            return hashlib.sha256(_canonical(item)).hexdigest()[:32]
        except (TypeError, ValueError):
            raise FlowError(node.name, f"item {index} is not JSON; give the map node a key= "
                                       "so each item has a stable step key") from None
    value = user_code(node, "key", lambda i: key(i) if callable(key) else (
        i.get(key) if isinstance(i, Mapping) else getattr(i, key, None)), item)
    if value is None:
        raise FlowError(node.name, f"item {index} has no key ({key!r} is missing)")
    text = str(value)
    # Step keys are stored (512 characters at most): a long key is kept as its digest.
    return text if len(text) <= 200 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _content_hash(item: Mapping[str, Any]) -> str | None:
    try:
        return record_hash(item)
    except AgentError:
        return None


def user_code(node: Node, what: str, fn: Any, *args: Any) -> Any:
    """Call a router / each / combine / key function; its errors become the project's."""
    try:
        return fn(*args)
    except AgentError:
        raise
    except Exception as exc:
        raise AgentCallError(f"node {node.name}", f"{what} raised {type(exc).__name__}: {exc}") from exc


def dedupe(node: Node, batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    key = node.merge_key
    seen: set[Any] = set()
    out: list[dict[str, Any]] = []
    for batch in batches:
        for record in batch:
            if key is None:
                value = record[PROVENANCE]["hash"]
            elif callable(key):
                value = key(record)
            else:
                value = record.get(key)
            if value is not None:
                if value in seen:
                    continue
                seen.add(value)
            out.append(record)
    return out
