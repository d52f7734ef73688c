"""What a node returned, made into a valid envelope with provenance filled in.

A node may return an envelope, a list of records, an ``Output`` or None.  An
envelope is validated in full (hashes rechecked) and a malformed one fails
the node with an ``EnvelopeError`` naming the field; its records that name
neither a stored row (``source_id``) nor parents get parents by lineage.  Records without provenance get one
whose ``parents`` follow the node's ``lineage``; a record that kept an
upstream provenance but whose content changed gets a new hash, this node's
name, and its old hash as parent.  ``run_id`` and ``node`` are always filled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agent.envelope import PROVENANCE, record_hash, utc_now_iso, validate_envelope
from agent.errors import EnvelopeError

__all__ = ["Output", "to_envelope", "build_envelope", "parents_for"]

# Set by the engine itself; a node's Output cannot override them.
_ENGINE_KEYS = frozenset({"run_id", "flow", "node", "created_at", "duration_ms"})


class Output:
    """Records plus metadata, for a node that wants to say more than its records.

    The records get the same treatment as a returned list (provenance filled,
    edited records re-hashed with their old hash as parent); ``total_count``,
    ``partial``, ``errors``, ``source`` and any extra keys go into the metadata.
    """

    __slots__ = ("records", "metadata")

    def __init__(self, records: Sequence[Mapping[str, Any]], **metadata: Any) -> None:
        clash = _ENGINE_KEYS & set(metadata)
        if clash:
            raise EnvelopeError(f"metadata.{sorted(clash)[0]}", "is set by the engine")
        self.records = records
        self.metadata = metadata


def build_envelope(records: list[dict[str, Any]], *, run_id: str, flow: str, node: str, source: str,
                   duration_ms: float | None = None, total_count: int | None = None, partial: bool = False,
                   errors: Sequence[Mapping[str, Any]] = (), created_at: str | None = None,
                   **extra: Any) -> dict[str, Any]:
    """An envelope around records that already carry valid provenance (no re-hashing)."""
    metadata = {"run_id": run_id, "flow": flow, "node": node, "source": source,
                "created_at": created_at or utc_now_iso(),
                "total_count": len(records) if total_count is None else total_count,
                "partial": partial, "errors": [dict(e) for e in errors], "duration_ms": duration_ms}
    metadata.update(extra)
    return {"metadata": metadata, "records": records}


def parents_for(lineage: str | tuple[str, str] | None, upstream: Sequence[Mapping[str, Any]]) -> Any:
    """A function record -> parent hashes, for new records of a node that read ``upstream``."""
    if lineage is None or not upstream:
        return lambda record: []
    if lineage == "all":
        hashes = [r[PROVENANCE]["hash"] for r in upstream]
        return lambda record: hashes
    field, upstream_field = (lineage, lineage) if isinstance(lineage, str) else lineage
    by_value: dict[Any, list[str]] = {}
    for r in upstream:
        value = r.get(upstream_field)
        if value is not None and not isinstance(value, (dict, list)):
            by_value.setdefault(value, []).append(r[PROVENANCE]["hash"])
    return lambda record: by_value.get(record.get(field), [])


def to_envelope(out: Any, *, run_id: str, flow: str, node: str, agent: str | None,
                upstream: Sequence[Mapping[str, Any]], lineage: str | tuple[str, str] | None,
                duration_ms: float) -> dict[str, Any]:
    """Normalise a node's return value; raises ``EnvelopeError`` naming the field."""
    if out is None:
        return build_envelope([], run_id=run_id, flow=flow, node=node, source=agent or node,
                              duration_ms=duration_ms)
    if type(out) is list or type(out) is tuple:
        return _from_records(out, run_id=run_id, flow=flow, node=node, agent=agent,
                             parents=parents_for(lineage, upstream), duration_ms=duration_ms)
    if isinstance(out, Mapping) and "records" in out and "metadata" in out:
        return _from_envelope(out, run_id=run_id, flow=flow, node=node, duration_ms=duration_ms,
                              parents=parents_for(lineage, upstream))
    if isinstance(out, Output):
        env = _from_records(list(out.records), run_id=run_id, flow=flow, node=node, agent=agent,
                            parents=parents_for(lineage, upstream), duration_ms=duration_ms)
        meta = env["metadata"]
        meta.update(out.metadata)
        if "total_count" not in out.metadata:
            meta["total_count"] = len(env["records"])
        meta["errors"] = [{"node": node, **dict(e)} for e in meta["errors"]]
        try:
            validate_envelope(env, check_hashes=False)
        except EnvelopeError as exc:
            raise EnvelopeError(exc.field, f"{exc.reason} (returned by node {node!r})") from None
        return env
    if isinstance(out, (list, tuple)):
        return _from_records(out, run_id=run_id, flow=flow, node=node, agent=agent,
                             parents=parents_for(lineage, upstream), duration_ms=duration_ms)
    raise EnvelopeError("envelope", f"node {node!r} must return an envelope, a list of records or None, "
                                    f"not {type(out).__name__}")


def _from_envelope(out: Mapping[str, Any], *, run_id: str, flow: str, node: str,
                   duration_ms: float, parents: Any) -> dict[str, Any]:
    try:
        validate_envelope(out)
    except EnvelopeError as exc:
        raise EnvelopeError(exc.field, f"{exc.reason} (in the envelope node {node!r} returned)") from None
    records = []
    for record in out["records"]:
        prov = record[PROVENANCE]
        # A record that names no stored row (no source_id) and no parents was derived from
        # something: from what the node read, as its lineage says.  A row's origin stays bare.
        derived = not prov["parents"] and prov.get("source_id") is None
        if prov["run_id"] is None or prov["node"] is None or derived:
            prov = {**prov, "run_id": prov["run_id"] or run_id, "node": prov["node"] or node}
            if derived:
                prov["parents"] = list(parents(record))
            record = {**record, PROVENANCE: prov}
        records.append(record)
    metadata = dict(out["metadata"])
    metadata.update(run_id=run_id, flow=flow, node=node)
    if metadata["duration_ms"] is None:
        metadata["duration_ms"] = duration_ms
    return {"metadata": metadata, "records": records}


def _from_records(out: Sequence[Any], *, run_id: str, flow: str, node: str, agent: str | None,
                  parents: Any, duration_ms: float) -> dict[str, Any]:
    source = agent or node
    now = utc_now_iso()
    carried_any = False
    records = []
    for index, record in enumerate(out):
        if type(record) is not dict and not isinstance(record, Mapping):
            raise EnvelopeError(f"records[{index}]", f"node {node!r} returned a {type(record).__name__}, "
                                                     "not an object")
        try:
            prov = record.get(PROVENANCE)
            if prov is None:
                rec = dict(record)
                rec[PROVENANCE] = {"source": source, "source_id": None, "retrieved_at": now, "agent": agent,
                                   "run_id": run_id, "node": node, "hash": record_hash(record),
                                   "parents": list(parents(rec))}
            elif isinstance(prov, Mapping):
                carried_any = True
                rec = dict(record)
                rec[PROVENANCE] = _carried(rec, prov, run_id=run_id, node=node, source=source, now=now)
            else:
                raise EnvelopeError(PROVENANCE, "must be an object")
        except EnvelopeError as exc:
            raise EnvelopeError(f"records[{index}]" + (f".{exc.field}" if exc.field != "record" else ""),
                                f"{exc.reason} (returned by node {node!r})") from None
        records.append(rec)
    envelope = build_envelope(records, run_id=run_id, flow=flow, node=node, source=source,
                              duration_ms=duration_ms, created_at=now)
    if carried_any:
        # Provenance made here is valid by construction, and every record's content was
        # just serialised to hash it; a provenance carried in from elsewhere is checked.
        try:
            validate_envelope(envelope, check_hashes=False)
        except EnvelopeError as exc:
            raise EnvelopeError(exc.field, f"{exc.reason} (returned by node {node!r})") from None
    return envelope


def _carried(record: dict[str, Any], prov: Mapping[str, Any], *, run_id: str, node: str, source: str,
             now: str) -> dict[str, Any]:
    """An upstream provenance kept on a record; a changed record becomes this node's, derived from its past."""
    new_hash = record_hash(record)
    old_hash = prov.get("hash")
    carried = dict(prov)
    if old_hash != new_hash:
        carried.update(hash=new_hash, node=node, run_id=run_id, retrieved_at=now,
                       parents=[old_hash] if isinstance(old_hash, str) else list(prov.get("parents") or []))
    carried.setdefault("source", source)
    carried.setdefault("source_id", None)
    carried.setdefault("agent", None)
    carried.setdefault("retrieved_at", now)
    carried.setdefault("parents", [])
    if carried.get("run_id") is None:
        carried["run_id"] = run_id
    if carried.get("node") is None:
        carried["node"] = node
    return carried
