"""Campaign definitions: from code or from a YAML / JSON file, validated field by field.

::

    id: acme-q4
    name: Acme accounts, Q4
    lead_query: {company: Acme}
    template:                      # step 1 of the sequence
      subject: "{{ lead.company }} and outbound pipeline quality"
      body: "Hi {{ lead.first_name }}, ..."
      limits: {subject_chars: 150, body_words: 400}    # checked on every draft (optional)
      variants:                    # A/B arms (optional): a lead keeps the one it was first given
        - {id: a, weight: 1}
        - {id: b, subject: "A question about {{ lead.company }}", weight: 1}
      personalise: {enabled: true, instructions: "Mention one fact about them.", max_words: 120}
      steps:                       # later steps (optional), same fields plus their number
        - {step: 2, wait_days: 3, body: "Hi again {{ lead.first_name }}, ..."}   # "Re: <step 1's subject>"
    channel: outbox
    pacing:                        # checked right before each send (optional)
      daily_cap: 200
      per_domain_per_hour: 5
      window: {days: [1, 2, 3, 4, 5], start: "09:00", end: "17:00"}
      jitter_seconds: [20, 90]
    schedule: "0 9 * * 1-5"       # cron, in the campaign's time zone
    timezone: Europe/Berlin
    limits: {per_run: 200, batch_size: 50}
    allow_delivery: false          # delivery stays off until a campaign turns it on
    approval: none                 # or "required": drafts wait for an operator

A bad file gets a ``PayloadError`` naming the field (``schedule``,
``limits.batch_size``...) and nothing is registered or enqueued.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.delivery.pacing import Pacing
from agent.errors import PayloadError
from agent.scoring.icp import ICP
from agent.validation import ZoneName, first_error

__all__ = ["Campaign", "CampaignLimits", "CampaignTemplate", "CampaignStatus", "CopyLimits",
           "FollowUpTemplate", "PersonaliseOptions", "StepTemplate", "TemplateVariant", "load_campaign"]

CampaignStatus = Literal["draft", "active", "paused", "completed"]
_ID = r"^[A-Za-z0-9][\w.-]{0,63}$"


class CopyLimits(BaseModel):
    """What every draft of a template is checked against before it reaches the outbox (``agent.copy.checks``)."""

    model_config = ConfigDict(extra="forbid")
    # A good cold-email subject is short: past ~150 characters every client cuts it anyway.
    subject_chars: int = Field(default=150, ge=10, le=900)
    body_chars: int = Field(default=4000, ge=20, le=100_000)
    body_words: int = Field(default=400, ge=5, le=20_000)


class PersonaliseOptions(BaseModel):
    """Optional LLM personalisation of a step's rendered draft (``agent.copy.personalise``)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    # The campaign's own instructions to the model (trusted text; lead data never goes here).
    instructions: str = Field(default="", max_length=4000)
    max_words: int = Field(default=120, ge=10, le=2000)
    # The lead fields the model may see; None: every field but contact details and bookkeeping.
    fields: list[Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]{0,63}$")]] | None = Field(default=None, max_length=50)
    # An answer that breaks the schema or a check: use the template's draft ("fallback") or fail the lead.
    on_error: Literal["fallback", "fail"] = "fallback"


class TemplateVariant(BaseModel):
    """One arm of an A/B test: its own subject and/or body (else the step's), drawn by ``weight``."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_ID)
    subject: str | None = Field(default=None, min_length=1, max_length=900)
    body: str | None = Field(default=None, min_length=1, max_length=100_000)
    # 0 retires a variant: leads already assigned to it keep it, no new lead gets it.
    weight: float = Field(default=1.0, ge=0, le=1_000_000)


class StepTemplate(BaseModel):
    """The message of one sequence step: Jinja2 subject and body, checks' limits, options."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(default="v1", pattern=_ID)
    subject: str = Field(min_length=1, max_length=900)
    body: str = Field(min_length=1, max_length=100_000)
    limits: CopyLimits = CopyLimits()
    personalise: PersonaliseOptions = PersonaliseOptions()
    variants: list[TemplateVariant] = Field(default_factory=list, max_length=20)

    @field_validator("variants")
    @classmethod
    def _arms(cls, value: list[TemplateVariant]) -> list[TemplateVariant]:
        ids = [v.id for v in value]
        for index, variant_id in enumerate(ids):
            if variant_id in ids[:index]:
                raise ValueError(f"variant id {variant_id!r} is used twice")
        if value and not any(v.weight > 0 for v in value):
            raise ValueError("at least one variant needs a weight above 0")
        return value

    def variant(self, variant_id: str) -> TemplateVariant | None:
        return next((v for v in self.variants if v.id == variant_id), None)


class FollowUpTemplate(StepTemplate):
    """A later step's template (``step`` 2 or more), sent ``wait_days`` after the step before it, in
    the same thread (``In-Reply-To`` / ``References``).  Its id defaults to ``step<N>``; its subject
    to ``Re:`` and the first step's subject as sent (``thread.subject``)."""

    step: int = Field(ge=2, le=100)
    subject: str = Field(default="Re: {{ thread.subject }}", min_length=1, max_length=900)
    wait_days: float = Field(default=3, gt=0, le=365)

    @model_validator(mode="before")
    @classmethod
    def _default_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("id") is None and isinstance(data.get("step"), int):
            data = {**data, "id": f"step{data['step']}"}
        return data


class CampaignTemplate(StepTemplate):
    """Step 1's template (its own fields), plus the templates of later steps in ``steps``.

    A campaign with a single ``template:`` (subject and body) is a one-step sequence, as before.
    """

    steps: list[FollowUpTemplate] = Field(default_factory=list, max_length=20)

    @field_validator("steps")
    @classmethod
    def _once_per_step(cls, value: list[FollowUpTemplate]) -> list[FollowUpTemplate]:
        seen: set[int] = set()
        for follow_up in value:
            if follow_up.step in seen:
                raise ValueError(f"step {follow_up.step} has two templates")
            seen.add(follow_up.step)
        return value

    def waits(self) -> dict[int, float]:
        """Each step of the sequence and the days to wait before it (step 1: none)."""
        return {1: 0.0, **{f.step: f.wait_days for f in self.steps}}

    def for_step(self, step: int) -> StepTemplate:
        """The template of sequence step ``step``; a step without one is a ``PayloadError`` naming ``step``."""
        if step == 1:
            return self
        for follow_up in self.steps:
            if follow_up.step == step:
                return follow_up
        known = ", ".join(str(n) for n in [1, *sorted(f.step for f in self.steps)])
        raise PayloadError("step", f"the template has no step {step} (it has steps {known})")


class CampaignLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_run: int = Field(default=100, ge=1, le=100_000)
    batch_size: int = Field(default=50, ge=1, le=1_000)
    max_attempts: int = Field(default=5, ge=1, le=100)


class Campaign(BaseModel):
    """One outreach campaign: who (``lead_query``), what (``template``), how (channel, limits, gates)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=_ID)
    name: str = Field(default="", max_length=200)
    tenant: str = Field(default="default", pattern=_ID)
    lead_query: dict[str, Any] | str
    template: CampaignTemplate
    channel: Literal["outbox", "smtp"] = "outbox"
    schedule: str | None = None
    timezone: ZoneName = "UTC"
    limits: CampaignLimits = CampaignLimits()
    allow_delivery: bool = False
    approval: Literal["none", "required"] = "none"
    status: CampaignStatus = "draft"
    # Who fits (agent.scoring): rules and a description; leads scoring below its threshold are left out.
    icp: ICP | None = None
    # The enrich node: "auto" runs it when something reads its facts (an ICP, an LLM personalisation,
    # a template mentioning ``enrichment``); "always" or "never" decide outright.
    enrich: Literal["auto", "always", "never"] = "auto"
    # Sending hygiene (agent.delivery.pacing): the mailbox's daily cap and warm-up, a rate per recipient
    # domain, send windows in ``timezone``, jitter, and the bounce/complaint guard; checked per message.
    pacing: Pacing | None = None

    @field_validator("icp")
    @classmethod
    def _icp(cls, value: ICP | None) -> ICP | None:
        if value is not None and value.total_weight() == 0:
            raise ValueError("needs at least one rule, or a description with a weight")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"not a valid cron expression: {value!r} (five fields: minute hour day month weekday)")
        return value

    @classmethod
    def parse(cls, data: Any, *, source: str = "campaign") -> Campaign:
        if isinstance(data, Campaign):
            return data
        if not isinstance(data, dict):
            raise PayloadError(source, "must be a mapping of campaign fields")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PayloadError(*first_error(exc, "")) from None

    def needs_enrichment(self) -> bool:
        """Whether anything reads the enricher's facts: an ICP, an LLM personalisation, or a template
        that mentions ``enrichment``.  A campaign without any of them skips the enrich node."""
        if self.enrich != "auto":
            return self.enrich == "always"
        if self.icp is not None:
            return True
        steps = [self.template, *self.template.steps]
        return any(step.personalise.enabled or any("enrichment" in text for text in _texts(step))
                   for step in steps)

    def fire_times(self, after: datetime, until: datetime) -> list[datetime]:
        """The schedule's firing instants in (after, until], in the campaign's time zone."""
        if self.schedule is None:
            return []
        zone = ZoneInfo(self.timezone)
        times = croniter(self.schedule, after.astimezone(zone))
        out: list[datetime] = []
        while True:
            moment = times.get_next(datetime)
            if moment > until.astimezone(zone):
                return out
            out.append(moment)
            if len(out) >= 1000:  # a long gap since the last tick: fire the latest ones, not a flood
                return out[-1:]


def _texts(step: StepTemplate) -> list[str]:
    return [step.subject, step.body, *(t for v in step.variants for t in (v.subject, v.body) if t)]


def load_campaign(path: str | Path) -> Campaign:
    """A campaign from a ``.yaml`` / ``.yml`` / ``.json`` file; errors name the field."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PayloadError("file", f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PayloadError("file", f"{file.name} is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: "
                                   f"{str(exc).splitlines()[0]}") from None
    return Campaign.parse(data)


def check_tenant(campaign: Campaign, tenant: str, *, who: str = "this orchestrator") -> None:
    """A campaign works on one tenant's leads: another tenant's is refused, naming ``campaign.tenant``."""
    if campaign.tenant != tenant:
        raise PayloadError("campaign.tenant", f"is {campaign.tenant!r}, but {who} works for tenant {tenant!r}")
