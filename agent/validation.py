"""Turning pydantic validation errors into the project's field paths.

One spelling everywhere: ``records[3].provenance.hash``, ``lead_query.limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ValidationError

from agent.errors import PayloadError

__all__ = ["field_path", "first_error", "parse_model", "ZoneName"]


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"not a known time zone: {value!r}") from None
    return value


# An IANA time zone name ("Europe/Berlin"), checked against the zone database.
ZoneName = Annotated[str, AfterValidator(_known_zone)]


def field_path(loc: Sequence[Any], prefix: str = "") -> str:
    """``("records", 3, "to")`` → ``records[3].to``; ``prefix`` goes in front."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


# pydantic puts the member of a union it tried into ``loc`` ("dict[str,any]", "str"): a type, not a field.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "tuple", "set", "none", "bytes"})


def _is_type_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in _TYPE_TAGS)


def first_error(exc: ValidationError, prefix: str = "") -> tuple[str, str]:
    """The first error of ``exc`` as ``(field path, lower-cased reason)``.

    A value that fits no member of a union gets one reason listing what each
    member wanted ("input should be a valid dictionary, or input should be a
    valid string"), under the field's own path.
    """
    errors = exc.errors(include_url=False)
    loc = [part for part in errors[0]["loc"] if not _is_type_tag(part)]
    reasons = [str(errors[0]["msg"]).lower()]
    for other in errors[1:]:
        if [p for p in other["loc"] if not _is_type_tag(p)] == loc and len(other["loc"]) != len(loc):
            reason = str(other["msg"]).lower()
            if reason not in reasons:
                reasons.append(reason)
    return field_path(loc, prefix) or prefix, ", or ".join(reasons)


def parse_model(model: type[BaseModel], value: Any, field: str) -> BaseModel:
    """``value`` as a ``model`` instance (one is returned as is); ``PayloadError`` names the field."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise PayloadError(*first_error(exc, field)) from None
