"""Campaign definitions: from code or from a YAML / JSON file, validated field by field.

::

    id: acme-q4
    name: Acme accounts, Q4
    lead_query: {company: Acme}
    template:
      subject: "{{ lead.company }} and outbound pipeline quality"
      body: "Hi {{ lead.first_name }}, ..."
    channel: outbox
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
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import PayloadError
from agent.scoring.icp import ICP
from agent.validation import first_error

__all__ = ["Campaign", "CampaignLimits", "CampaignTemplate", "CampaignStatus", "load_campaign"]

CampaignStatus = Literal["draft", "active", "paused", "completed"]
_ID = r"^[A-Za-z0-9][\w.-]{0,63}$"


class CampaignTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(default="v1", pattern=_ID)
    subject: str = Field(min_length=1, max_length=900)
    body: str = Field(min_length=1, max_length=100_000)


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
    channel: Literal["outbox"] = "outbox"
    schedule: str | None = None
    timezone: str = "UTC"
    limits: CampaignLimits = CampaignLimits()
    allow_delivery: bool = False
    approval: Literal["none", "required"] = "none"
    status: CampaignStatus = "draft"
    # Who fits (agent.scoring): rules and a description; leads scoring below its threshold are left out.
    icp: ICP | None = None

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

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not a known time zone: {value!r}") from None
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
