"""Copywriter agent: one lead and a campaign template in, one draft message out.

Templates are Jinja2, rendered in a sandbox with ``StrictUndefined``: a
misspelt variable or an attempt to reach Python internals
(``{{ lead.__class__ }}``) is a ``PayloadError`` naming ``template.subject``
or ``template.body``, never a half-rendered email.  The variables are
``lead`` (the lead record, without its provenance) and ``campaign``
(``{"id": ...}``); a field that is empty (None) renders as nothing.

The draft's provenance has the lead record's hash as its parent, and names
the template (id and sha256 of its text), so a sent message can be traced
back to the lead row and the template that produced it.
"""

from __future__ import annotations

import functools

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import (
    SecurityError,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

from agent.delivery.message import is_one_line, wire_address
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.agents.base import BaseAgent
from agent.campaigns.model import CampaignTemplate
from agent.context import RunContext
from agent.envelope import PROVENANCE, make_envelope, make_provenance, record_hash
from agent.errors import PayloadError
from agent.validation import first_error

__all__ = ["CopywriterAgent", "DraftRequest", "MAX_SUBJECT", "MAX_BODY"]

# The delivery limits: a draft the copywriter returns is one delivery accepts.
MAX_SUBJECT = 900
MAX_BODY = 200_000
_CACHE_SIZE = 512


class DraftRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lead: dict[str, Any]
    template: CampaignTemplate
    campaign_id: str = Field(pattern=r"^[\w.:@/-]{1,128}$")
    step: int = Field(default=1, ge=1, le=100)


class _Sandbox(ImmutableSandboxedEnvironment):
    """The Jinja2 sandbox, plus a bound on ``*`` and ``**`` so a template cannot allocate gigabytes."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Filters such as center / indent / truncate take sizes: no number beyond a body's length.
        self.filters = {name: _bounded(fn) for name, fn in self.filters.items()}

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _check_sizes(args, kwargs)  # 'a'.center(10**9) and the like
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_BODY:
                    raise SecurityError(f"'*' would make a value longer than {MAX_BODY}")
        elif operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
            raise SecurityError("'**' with an exponent above 64 is not allowed")
        return super().call_binop(context, operator, left, right)


def _check_sizes(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_BODY:
            raise SecurityError(f"a number above {MAX_BODY} cannot be passed to a call in a template")


def _bounded(fn: Any) -> Any:
    @functools.wraps(fn)  # keeps Jinja's pass_context / pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_sizes(args, kwargs)
        return fn(*args, **kwargs)

    return bounded


def _finalize(value: Any) -> Any:
    return "" if value is None else value


class CopywriterAgent(BaseAgent):
    """Drafts one message for one lead from a campaign template (sandboxed Jinja2)."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    source = "copywriter"

    def __init__(self) -> None:
        self.env = _Sandbox(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        self._templates: OrderedDict[tuple[str, str, str], Template] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        req = _parse(request)
        lead = {k: v for k, v in req.lead.items() if k != PROVENANCE}
        parent = _lead_hash(req.lead, lead)
        if req.lead.get("lead_id") in (None, ""):
            raise PayloadError("lead.lead_id", "is required")
        to = _recipient(lead.get("email"))
        variables = {"lead": lead, "campaign": {"id": req.campaign_id}}
        subject = self.render(req.template, "subject", variables, MAX_SUBJECT)
        if not is_one_line(subject):
            raise PayloadError("template.subject", "must render to a single line (it contains a line break)")
        subject = subject.strip()
        body = self.render(req.template, "body", variables, MAX_BODY)
        for field, text in (("subject", subject), ("body", body)):
            if not text.strip():
                raise PayloadError(f"template.{field}", "renders to nothing for this lead")
        draft = {"to": to, "subject": subject, "body": body, "lead_id": str(lead["lead_id"]),
                 "campaign_id": req.campaign_id, "step": req.step, "template_id": req.template.id}
        draft[PROVENANCE] = make_provenance(
            draft, source=self.source, agent="copywriter", run_id=context.run_id, node=context.node,
            parents=[parent], template_id=req.template.id, template_sha256=_template_hash(req.template),
        )
        return make_envelope([draft], source=self.source, run_id=context.run_id, flow=context.flow,
                             node=context.node, agent="copywriter", duration_ms=context.elapsed_ms())

    def render(self, template: CampaignTemplate, field: str, variables: Mapping[str, Any], limit: int) -> str:
        """``template.<field>`` rendered with ``variables``; a ``PayloadError`` names the field and why."""
        compiled = self.compiled(template, field)
        where = f"template.{field}"
        out: list[str] = []
        size = 0
        try:
            for chunk in compiled.generate(**variables):
                size += len(chunk)
                if size > limit:
                    raise PayloadError(where, f"renders to more than {limit} characters")
                out.append(chunk)
        except PayloadError:
            raise
        except UndefinedError as exc:
            raise PayloadError(where, f"uses an undefined variable: {exc.message}") from None
        except SecurityError as exc:
            raise PayloadError(where, f"refused by the template sandbox: {exc.message}") from None
        except TemplateError as exc:
            raise PayloadError(where, f"cannot be rendered: {exc.message}") from None
        except Exception as exc:  # an error inside an expression: 1/0, "a" + 1 ...
            raise PayloadError(where, f"cannot be rendered: {type(exc).__name__}: {str(exc)[:200]}") from None
        return "".join(out)

    def compiled(self, template: CampaignTemplate, field: str) -> Template:
        """The compiled ``template.<field>``, compiled once per (template id, field, text)."""
        text = getattr(template, field)
        key = (template.id, field, text)
        with self._lock:
            found = self._templates.get(key)
            if found is not None:
                self._templates.move_to_end(key)
                return found
        try:
            compiled = self.env.from_string(text)
        except TemplateSyntaxError as exc:
            raise PayloadError(f"template.{field}", f"syntax error on line {exc.lineno}: {exc.message}") from None
        with self._lock:
            self._templates[key] = compiled
            while len(self._templates) > _CACHE_SIZE:
                self._templates.popitem(last=False)
        return compiled

    def cache_size(self) -> int:
        with self._lock:
            return len(self._templates)


def _parse(request: Mapping[str, Any]) -> DraftRequest:
    if not isinstance(request.get("lead"), Mapping):
        raise PayloadError("lead", "must be a lead record (an object)")
    try:
        return DraftRequest.model_validate({**request, "lead": dict(request["lead"])})
    except ValidationError as exc:
        raise PayloadError(*first_error(exc, "")) from None


def _lead_hash(record: Mapping[str, Any], content: Mapping[str, Any]) -> str:
    """The lead record's hash: its provenance hash, which must match its content."""
    actual = record_hash(content)
    prov = record.get(PROVENANCE)
    if isinstance(prov, Mapping) and prov.get("hash") is not None and prov["hash"] != actual:
        raise PayloadError("lead.provenance.hash", "does not match the lead's content")
    return actual


def _recipient(email: Any) -> str:
    if not isinstance(email, str) or not email.strip():
        raise PayloadError("lead.email", "the lead has no email address")
    try:
        wire_address(email.strip())
    except ValueError as exc:
        raise PayloadError("lead.email", str(exc)) from None
    return email.strip()


def _template_hash(template: CampaignTemplate) -> str:
    return hashlib.sha256(f"{template.subject}\0{template.body}".encode()).hexdigest()
