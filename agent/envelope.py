"""The canonical envelope every node returns and every boundary validates.

An envelope is a plain JSON-serialisable dict::

    {"metadata": {"run_id", "flow", "node", "source", "created_at", "total_count",
                  "partial", "errors", "duration_ms", ...},
     "records":  [{...domain fields..., "provenance": {...}}]}

The typed dicts below are the single source of truth: pydantic validates
with them, and they produce the published JSON Schema (``agent schema
envelope``).  Records stay plain dicts; the types only check them (typed
dicts, not models: nothing is built per record, which keeps a check cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Annotated, Any

from typing_extensions import NotRequired, TypedDict

from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, with_config
from pydantic import ValidationError as _PydanticValidationError

from agent.errors import EnvelopeError
from agent.validation import first_error

__all__ = [
    "make_envelope",
    "validate_envelope",
    "record_hash",
    "make_provenance",
    "envelope_json_schema",
    "canonical_json",
    "new_run_id",
    "utc_now_iso",
]

PROVENANCE = "provenance"


@lru_cache(maxsize=1024)  # a run's records share a handful of timestamps (only the good ones are kept)
def _check_utc_iso(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO-8601 timestamp") from None
    if parsed.utcoffset() is None or parsed.utcoffset().total_seconds() != 0:
        raise ValueError("must be in UTC (end with Z or +00:00)")
    return value


_UTC = AfterValidator(_check_utc_iso)


@with_config(ConfigDict(extra="allow"))
class ErrorItem(TypedDict):
    code: str
    message: str
    node: str | None


@with_config(ConfigDict(extra="allow"))
class Provenance(TypedDict):
    """Where a record came from; ``parents`` are upstream record hashes."""

    source: Annotated[str, Field(min_length=1)]
    source_id: str | None
    retrieved_at: Annotated[str, _UTC]
    agent: str | None
    run_id: str | None
    node: str | None
    hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    parents: list[str]
    raw_row: NotRequired[dict[str, Any] | None]


@with_config(ConfigDict(extra="allow"))
class Record(TypedDict):
    provenance: Provenance


@with_config(ConfigDict(extra="allow"))
class Metadata(TypedDict):
    run_id: Annotated[str, Field(min_length=1)]
    flow: str | None
    node: str | None
    source: Annotated[str, Field(min_length=1)]
    created_at: Annotated[str, _UTC]
    # strict: validation returns the envelope unchanged, so a coerced value
    # ("partial": "false", which is truthy) would leak through as-is.
    total_count: Annotated[int, Field(ge=0, strict=True)]
    partial: Annotated[bool, Field(strict=True)]
    errors: list[ErrorItem]
    duration_ms: Annotated[float | None, Field(ge=0, strict=True)]


@with_config(ConfigDict(extra="forbid", title="AgentEnvelope"))
class Envelope(TypedDict):
    """The canonical envelope: ``metadata`` plus ``records``."""

    metadata: Metadata
    records: list[Record]


_ENVELOPE = TypeAdapter(Envelope)


# Run ids need to be unique, not secret: a Mersenne Twister seeded from the OS (and
# reseeded in a forked child) is several times cheaper than uuid4 on every run.
_ids = random.Random(os.urandom(32))
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_run_id() -> str:
    """32 hex digits (128 random bits), like ``uuid4().hex``."""
    return f"{_ids.getrandbits(128):032x}"


_second: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now in UTC, ISO-8601 with microseconds and ``Z``.  The text up to the second is
    formatted once per second (every record of every node gets a timestamp); the
    cache is one tuple, swapped whole, so threads never see half of an update."""
    global _second
    now = time.time()
    second = int(now)
    cached = _second
    if cached[0] == second:
        prefix = cached[1]
    else:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, prefix)
    return f"{prefix}.{int((now - second) * 1_000_000):06d}Z"


_local = threading.local()


def _new_encoder() -> Any:
    """The C encoder behind ``json.dumps(sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)``, built once per thread: building it is
    most of the cost of a ``dumps`` call on a small record."""
    if _c_make_encoder is None:  # pragma: no cover - CPython always has it
        encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return lambda value, _level: [encoder.encode(value)]
    return _c_make_encoder({}, _no_default, json.encoder.encode_basestring, None, ":", ",", True, False, False)


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _canonical(value: Any) -> bytes:
    encode = getattr(_local, "encode", None)
    if encode is None:
        encode = _local.encode = _new_encoder()
    try:
        return "".join(encode(value, 0)).encode("utf-8")
    except BaseException:
        # A failed encoding can leave ids in the encoder's circular-reference memo.
        _local.encode = None
        raise


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (sorted keys, no spaces, UTF-8 kept); ``TypeError`` or
    ``ValueError`` if it is not JSON."""
    return _canonical(value).decode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """sha256 of the record's canonical JSON, its provenance left out."""
    try:
        return _body_hash(record)
    except (TypeError, ValueError) as exc:
        raise EnvelopeError("record", f"is not JSON-serialisable ({exc})") from exc


def _body_hash(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != PROVENANCE} if PROVENANCE in record else record
    return hashlib.sha256(_canonical(body)).hexdigest()


def make_provenance(
    record: Mapping[str, Any],
    *,
    source: str,
    source_id: str | None = None,
    agent: str | None = None,
    run_id: str | None = None,
    node: str | None = None,
    parents: Sequence[str] = (),
    raw_row: Mapping[str, Any] | None = None,
    retrieved_at: str | None = None,
    hash_now: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A record's provenance.  ``hash_now=False`` leaves ``hash`` None for ``make_envelope`` to
    fill (it hashes every record it is given, so hashing here too would be done twice)."""
    prov: dict[str, Any] = {
        "source": source,
        "source_id": source_id,
        "retrieved_at": retrieved_at or utc_now_iso(),
        "agent": agent,
        "run_id": run_id,
        "node": node,
        "hash": record_hash(record) if hash_now else None,
        "parents": list(parents),
    }
    if raw_row is not None:
        prov["raw_row"] = dict(raw_row)
    prov.update(extra)
    return prov


def make_envelope(
    records: Iterable[Mapping[str, Any]],
    *,
    source: str,
    run_id: str | None = None,
    flow: str | None = None,
    node: str | None = None,
    agent: str | None = None,
    total_count: int | None = None,
    partial: bool = False,
    errors: Sequence[Mapping[str, Any]] = (),
    duration_ms: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a valid envelope; records without provenance get one.

    A record that already carries provenance keeps its origin (``source``,
    ``source_id``, ``parents``...) but its ``hash`` is recomputed and missing
    ``run_id``/``node``/``agent`` are filled, so a record edited on its way
    through a flow never carries a stale hash.
    """
    run_id = run_id or new_run_id()
    now = utc_now_iso()
    out: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        rec = dict(record)
        try:
            prov = rec.get(PROVENANCE)
            if prov is None:
                rec[PROVENANCE] = make_provenance(
                    rec, source=source, agent=agent, run_id=run_id, node=node, retrieved_at=now
                )
            else:
                prov = dict(prov)
                prov["hash"] = record_hash(rec)
                for key, value in (("run_id", run_id), ("node", node), ("agent", agent)):
                    if prov.get(key) is None:
                        prov[key] = value
                prov.setdefault("source", source)
                prov.setdefault("source_id", None)
                prov.setdefault("retrieved_at", now)
                prov["parents"] = list(prov.get("parents") or [])
                rec[PROVENANCE] = prov
        except EnvelopeError as exc:
            raise EnvelopeError(f"records[{index}]", exc.reason) from exc
        out.append(rec)
    metadata: dict[str, Any] = {
        "run_id": run_id,
        "flow": flow,
        "node": node,
        "source": source,
        "created_at": now,
        "total_count": len(out) if total_count is None else total_count,
        "partial": partial,
        "errors": [{"node": node, **dict(e)} for e in errors],
        "duration_ms": duration_ms,
    }
    clash = set(extra) & set(metadata)
    if clash:
        raise EnvelopeError(f"metadata.{sorted(clash)[0]}", "is set by make_envelope; pass it by its keyword")
    metadata.update(extra)
    return {"metadata": metadata, "records": out}


def validate_envelope(envelope: Any, *, check_hashes: bool = True) -> dict[str, Any]:
    """Check ``envelope`` against the contract and return it unchanged.

    Raises ``EnvelopeError`` whose ``field`` is the offending path, e.g.
    ``records[3].provenance.hash``.  Every record, provenance included, must be
    JSON-serialisable; with ``check_hashes`` every record's hash is recomputed.
    """
    if not isinstance(envelope, Mapping):
        raise EnvelopeError("envelope", f"must be a dict, not {type(envelope).__name__}")
    try:
        _ENVELOPE.validate_python(envelope)
    except _PydanticValidationError as exc:
        path, reason = first_error(exc)
        raise EnvelopeError(path or "envelope", reason) from None
    for index, record in enumerate(envelope["records"]):
        # The whole record must serialise, provenance included.  With ``check_hashes`` the hash
        # serialises everything but the provenance, so only the provenance is left to try.
        try:
            if check_hashes:
                _canonical(record[PROVENANCE])
                matches = record[PROVENANCE]["hash"] == _body_hash(record)
            else:
                _canonical(record)
                matches = True
        except (TypeError, ValueError) as exc:
            raise EnvelopeError(f"records[{index}]", f"is not JSON-serialisable ({exc})") from None
        if not matches:
            raise EnvelopeError(f"records[{index}].provenance.hash", "does not match the record's content")
    try:
        _canonical(envelope["metadata"])
    except (TypeError, ValueError) as exc:
        raise EnvelopeError("metadata", f"is not JSON-serialisable ({exc})") from None
    return envelope  # type: ignore[return-value]


def envelope_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the canonical envelope."""
    schema = _ENVELOPE.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://agent.example/schemas/envelope.json"
    return schema
