"""Copywriter agent: one lead and a campaign template in, one checked draft message out.

Request: ``{"lead", "template", "campaign_id", "step"}``.  ``template`` is a
``CampaignTemplate``: step 1's subject and body, and optionally later steps'
templates (``steps``); ``step`` picks which one is drafted.

1. **Render.**  Templates are Jinja2, rendered in a sandbox with
   ``StrictUndefined``: a misspelt variable or an attempt to reach Python
   internals (``{{ lead.__class__ }}``) is a ``PayloadError`` naming
   ``template.subject`` or ``template.body``, never a half-rendered email.  The
   variables are ``lead`` (the lead record, without its provenance) and
   ``campaign`` (``{"id": ...}``); a field that is empty (None) renders as nothing.
2. **Variant.**  A step with ``variants`` draws one per lead
   (``agent.copy.variants``), keeps it in the database (the first assignment
   stands), and renders that variant's subject and/or body.
3. **Personalise** (optional, ``personalise.enabled``): the rendered draft and
   the lead go to the LLM (``agent.copy.personalise``); lead data that reads as
   an instruction refuses the lead; an unusable answer falls back to the
   rendered draft (recorded) or fails the lead, as the step says.
4. **Check** (``agent.copy.checks``): no instruction-like text brought in by
   lead data, no unresolved placeholder, the step's length limits, and the
   footer (postal address, opt-out) in the text as it will be sent.  A failed
   check raises its ``CopyRejected`` code and no draft is returned.

The draft's provenance has the lead record's hash as its parent, and names the
template (id and sha256 of its text), the variant, and the model call (model,
prompt hash, cached, usage, cost), so a sent message can be traced back to the
lead row, the template and the model call that produced it.  With
personalisation on, the envelope's metadata ``llm`` totals the call.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from jinja2 import StrictUndefined, Template
from jinja2.exceptions import (
    SecurityError,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.agents.base import BaseAgent
from agent.campaigns.model import CampaignTemplate, StepTemplate
from agent.context import RunContext
from agent.copy.checks import check_draft
from agent.copy.errors import PromptInjection
from agent.copy.injection import scan_record
from agent.copy.personalise import LeadRef, Personalised, Personaliser, llm_totals
from agent.copy.variants import VariantStore, pick_variant
from agent.delivery.message import is_one_line, wire_address
from agent.envelope import PROVENANCE, make_envelope, make_provenance, record_hash
from agent.errors import PayloadError
from agent.llm import LLMClient
from agent.settings import Settings
from agent.storage.db import Database
from agent.validation import first_error

__all__ = ["CopywriterAgent", "DraftRequest", "MAX_SUBJECT", "MAX_BODY"]

# The delivery limits: a draft the copywriter returns is one delivery accepts.
MAX_SUBJECT = 900
MAX_BODY = 200_000
_CACHE_SIZE = 512


class _Thread(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(default="", max_length=900)
    message_ids: list[Annotated[str, Field(pattern=r"^<[^<>\s]{3,250}>$")]] = Field(default_factory=list,
                                                                                    max_length=100)


class DraftRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lead: dict[str, Any]
    template: CampaignTemplate
    campaign_id: str = Field(pattern=r"^[\w.:@/-]{1,128}$")
    step: int = Field(default=1, ge=1, le=100)
    # A follow-up's thread: the first step's subject as sent, and the Message-IDs sent so far.
    thread: _Thread | None = None


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


@dataclass(frozen=True)
class _Copy:
    """The text a draft renders from: a step's template, or one of its variants, and where each part lives."""

    template: StepTemplate
    subject: str
    body: str
    subject_field: str
    body_field: str
    variant_id: str | None = None

    def sha256(self) -> str:
        return hashlib.sha256(f"{self.subject}\0{self.body}".encode()).hexdigest()


class CopywriterAgent(BaseAgent):
    """Drafts one message for one lead from a campaign template (sandboxed Jinja2), optionally
    personalised by an LLM, and checked before it is returned."""

    capabilities: ClassVar[frozenset[str]] = frozenset()
    source = "copywriter"

    def __init__(self, db: Database | None = None, llm: LLMClient | None = None) -> None:
        """``db``: where variant assignments are kept (default: the run's configured database);
        ``llm``: the client personalisation calls (default: one per LLM configuration)."""
        self.env = _Sandbox(undefined=StrictUndefined, autoescape=False, finalize=_finalize)
        self._templates: OrderedDict[tuple[str, str, str], Template] = OrderedDict()
        self._lock = threading.Lock()
        self._db, self._llm = db, llm
        self._stores: dict[str, VariantStore] = {}
        self._clients: dict[tuple[Any, ...], LLMClient] = {}

    def run(self, request: Mapping[str, Any], *, context: RunContext) -> dict[str, Any]:
        req = _parse(request)
        lead = {k: v for k, v in req.lead.items() if k != PROVENANCE}
        parent = _lead_hash(req.lead, lead)
        if req.lead.get("lead_id") in (None, ""):
            raise PayloadError("lead.lead_id", "is required")
        to = _recipient(lead.get("email"))
        lead_id = str(lead["lead_id"])
        copy = self._copy_for(req, lead_id, context)
        variables: dict[str, Any] = {"lead": lead, "campaign": {"id": req.campaign_id}}
        if req.thread is not None:
            variables["thread"] = {"subject": req.thread.subject}
        subject = self.render_text(copy.template.id, copy.subject, copy.subject_field, variables, MAX_SUBJECT)
        if not is_one_line(subject):
            raise PayloadError(copy.subject_field, "must render to a single line (it contains a line break)")
        subject = subject.strip()
        body = self.render_text(copy.template.id, copy.body, copy.body_field, variables, MAX_BODY)
        for field, text in ((copy.subject_field, subject), (copy.body_field, body)):
            if not text.strip():
                raise PayloadError(field, "renders to nothing for this lead")
        settings = context.settings
        checks = {"limits": copy.template.limits, "sender": settings.sender, "postal_address": settings.postal_address}
        try:
            check_draft(subject, body, fields=(copy.subject_field, copy.body_field),
                        source=f"{copy.subject}\n{copy.body}", **checks)
        except PromptInjection:
            scan_record(lead)  # the phrase came from lead data: name the lead's field
            raise
        made: Personalised | None = None
        if copy.template.personalise.enabled:
            prov = req.lead.get(PROVENANCE) if isinstance(req.lead.get(PROVENANCE), Mapping) else {}
            ref = LeadRef(parent, prov.get("source"), prov.get("source_id"))
            made = Personaliser(self._client(settings)).run(lead=lead, ref=ref, subject=subject, body=body,
                                                             template=copy.template)
            if made.llm["outcome"] == "personalised":
                base = f"{subject}\n{body}"
                subject, body = made.subject, made.body
                check_draft(subject, body, fields=("llm.subject", "llm.body"), source=base, **checks)
        draft = {"to": to, "subject": subject, "body": body, "lead_id": lead_id, "campaign_id": req.campaign_id,
                 "step": req.step, "template_id": copy.template.id, "variant_id": copy.variant_id,
                 "facts": made.facts if made is not None else []}
        if req.thread is not None and req.thread.message_ids:
            # A follow-up answers the last message of its thread and names them all (RFC 5322 3.6.4).
            draft["in_reply_to"] = req.thread.message_ids[-1]
            draft["references"] = list(req.thread.message_ids)
        draft[PROVENANCE] = make_provenance(
            draft, source=self.source, agent="copywriter", run_id=context.run_id, node=context.node,
            parents=[parent], template_id=copy.template.id, template_sha256=copy.sha256(),
            variant_id=copy.variant_id, llm=made.llm if made is not None else None, hash_now=False,
        )
        extra: dict[str, Any] = {"template_id": copy.template.id, "variant_id": copy.variant_id}
        if made is not None:
            extra["llm"] = {**llm_totals([draft]), "outcome": made.llm["outcome"],
                            "fallback_reason": made.fallback_reason}
        return make_envelope([draft], source=self.source, run_id=context.run_id, flow=context.flow,
                             node=context.node, agent="copywriter", duration_ms=context.elapsed_ms(), **extra)

    # -- template, variant ---------------------------------------------------------------------
    def _copy_for(self, req: DraftRequest, lead_id: str, context: RunContext) -> _Copy:
        """The step's template and, if it has variants, the lead's variant (assigned once, kept)."""
        template = req.template.for_step(req.step)
        where = "template" if req.step == 1 else f"template.steps[{req.template.steps.index(template)}]"
        if not template.variants:
            return _Copy(template, template.subject, template.body, f"{where}.subject", f"{where}.body")
        store = self._variants(context)
        key = {"tenant": context.tenant, "campaign_id": req.campaign_id, "lead_id": lead_id, "step": req.step}
        kept = store.get(**key)
        if kept is None:
            drawn = pick_variant(template.variants, campaign_id=req.campaign_id, lead_id=lead_id, step=req.step)
            kept, _ = store.assign(**key, variant_id=drawn, template_id=template.id)
        variant = template.variant(kept)
        if variant is None:
            raise PayloadError(f"{where}.variants", f"lead {lead_id} was assigned variant {kept!r} for step "
                                                    f"{req.step}, which the template no longer has (retire a "
                                                    "variant with weight 0 instead of removing it)")
        index = template.variants.index(variant)
        subject_field = f"{where}.variants[{index}].subject" if variant.subject is not None else f"{where}.subject"
        body_field = f"{where}.variants[{index}].body" if variant.body is not None else f"{where}.body"
        return _Copy(template, variant.subject if variant.subject is not None else template.subject,
                     variant.body if variant.body is not None else template.body, subject_field, body_field,
                     variant.id)

    def _variants(self, context: RunContext) -> VariantStore:
        db = self._db or Database.for_settings(context.settings)
        with self._lock:
            store = self._stores.get(db.url)
            if store is None:
                store = self._stores[db.url] = VariantStore(db)
            return store

    def _client(self, settings: Settings) -> LLMClient:
        """The injected client, else one per LLM configuration (so its cache and connections are reused)."""
        if self._llm is not None:
            return self._llm
        secret = settings.llm_api_key.get_secret_value() if settings.llm_api_key is not None else None
        key = (settings.llm_base_url, settings.llm_model, secret, settings.llm_timeout, settings.llm_max_attempts,
               settings.llm_retry_base, settings.llm_price_prompt_per_mtok, settings.llm_price_completion_per_mtok)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = LLMClient(settings)
            return client

    # -- rendering -----------------------------------------------------------------------------
    def render(self, template: StepTemplate, field: str, variables: Mapping[str, Any], limit: int) -> str:
        """``template.<field>`` rendered with ``variables``; a ``PayloadError`` names the field and why."""
        return self.render_text(template.id, getattr(template, field), f"template.{field}", variables, limit)

    def render_text(self, template_id: str, text: str, where: str, variables: Mapping[str, Any],
                    limit: int) -> str:
        """``text`` rendered with ``variables``; a ``PayloadError`` names ``where`` and why."""
        compiled = self.compiled_text(template_id, text, where)
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

    def compiled(self, template: StepTemplate, field: str) -> Template:
        """The compiled ``template.<field>``, compiled once per (template id, field, text)."""
        return self.compiled_text(template.id, getattr(template, field), f"template.{field}")

    def compiled_text(self, template_id: str, text: str, where: str) -> Template:
        """``text`` compiled, once per (template id, where, text)."""
        key = (template_id, where, text)
        with self._lock:
            found = self._templates.get(key)
            if found is not None:
                self._templates.move_to_end(key)
                return found
        try:
            compiled = self.env.from_string(text)
        except TemplateSyntaxError as exc:
            raise PayloadError(where, f"syntax error on line {exc.lineno}: {exc.message}") from None
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
