"""Settings: every default lives here.

Resolution order: explicit arguments (CLI flags) → ``AGENT_*`` environment
variables → a TOML settings file (``AGENT_SETTINGS_FILE``, else
``agent.toml`` in the working directory if present) → the defaults below.
Nothing is read at import time; call ``get_settings()``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.errors import ConfigurationError
from agent.validation import first_error

__all__ = ["Settings", "get_settings", "default_home", "LogLevel"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def default_home() -> Path:
    """Per-user data directory: ``$XDG_DATA_HOME/agent`` or ``~/.local/share/agent``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "agent"


def _settings_file() -> Path | None:
    explicit = os.environ.get("AGENT_SETTINGS_FILE")
    if explicit:
        return Path(explicit)
    local = Path("agent.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Configuration for every part of the system (env prefix ``AGENT_``)."""

    model_config = SettingsConfigDict(env_prefix="AGENT_", extra="forbid")

    home: Path = Field(default_factory=default_home, description="Data directory for embedded defaults.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in `home`."
    )
    sample_data: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Load generated sample leads into an empty store: auto = only for the embedded default.",
    )
    sample_size: int = Field(default=2000, ge=0, le=1_000_000)
    tenant: str = Field(default="default", min_length=1)
    outbox_dir: Path | None = Field(default=None, description="Where the outbox channel writes .eml files.")
    sender: str = Field(default="Outreach Team <outreach@sender.example>")
    postal_address: str = Field(default="Example Ltd, 1 Sample Street, Springfield")
    fuzzy_cutoff: float = Field(default=80.0, ge=0, le=100)
    broker_url: str | None = Field(
        default=None, description="Celery broker for `agent worker --backend celery`: redis://… or amqp://…")
    broker_visibility_timeout: float = Field(
        default=3600.0, gt=0, description="Seconds before a Redis broker hands an unacked job out again; "
                                           "keep it above the longest job.")
    queue_lease: float = Field(default=60.0, gt=0, le=86_400, description="Seconds a worker holds a job between "
                                                                          "renewals (a third of it apart).")
    queue_recover_after: float = Field(default=600.0, gt=0, description="Seconds an open job may go untouched "
                                                                        "before its message is published again.")
    queue_commit_delay: float = Field(
        default=0.02, ge=0, le=60, description="Seconds a Celery worker process keeps a succeeded job's finish "
                                              "for the next job's claim to commit (group commit); 0: at once.")
    retry_base: float = Field(default=1.0, gt=0, le=3600, description="Seconds before a failed job's first "
                                                                      "retry; doubled for each one after.")
    processes: Literal["auto"] | int = Field(
        default="auto", description="Worker processes an embedded campaign run (`agent campaign run`) forks "
                                    "besides its own, which runs batches too: 0 runs them on threads of one "
                                    "process; auto: one process per core in all, at most 4, when there are "
                                    "several batches.")
    embedder: Literal["auto", "semantic", "hashing"] = Field(
        default="auto", description="auto: the semantic model when installed (extra `semantic`), else the "
                                    "deterministic hashing embedder.")
    llm_base_url: str | None = Field(default=None, description="An OpenAI-compatible endpoint, e.g. "
                                                               "https://api.openai.com/v1 or a local server; "
                                                               "unset: deterministic fallbacks answer.")
    llm_model: str | None = Field(default=None, description="The model asked for at that endpoint.")
    llm_api_key: SecretStr | None = Field(default=None, description="The endpoint's key (never logged).")
    llm_timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds an LLM call may wait at each step "
                                                                       "of an attempt (connect, each read).")
    llm_max_attempts: int = Field(default=3, ge=1, le=10, description="Attempts of an LLM call (timeouts, 429, "
                                                                      "5xx and malformed answers are retried).")
    llm_retry_base: float = Field(default=1.0, gt=0, le=60, description="Seconds before an LLM call's first "
                                                                        "retry; doubled for each one after.")
    llm_price_prompt_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million prompt tokens, "
                                                                            "for the cost in envelope metadata.")
    llm_price_completion_per_mtok: float = Field(default=0.0, ge=0, description="Price of a million completion "
                                                                                "tokens.")
    enrich_fetch: bool = Field(default=False, description="Let the enricher fetch the text of a lead's company "
                                                          "website (only hosts on enrich_fetch_allowlist).")
    enrich_fetch_allowlist: str = Field(default="", description="Comma-separated registrable domains the website "
                                                                "fetcher may reach; a host matches an entry or a "
                                                                "subdomain of it.")
    enrich_fetch_timeout: float = Field(default=5.0, gt=0, le=120, description="Seconds a website fetch waits to "
                                                                               "connect and for each read; the "
                                                                               "whole fetch gets three times this.")
    enrich_fetch_max_bytes: int = Field(default=500_000, ge=1024, le=50_000_000, description="Bytes of a page "
                                                                                             "read at most; the "
                                                                                             "rest is not read.")
    smtp_host: str | None = Field(default=None, description="The SMTP server of the smtp channel.")
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = Field(
        default="starttls", description="starttls (port 587), ssl (implicit TLS, port 465) or none (a local relay).")
    smtp_username: str | None = Field(default=None, description="Login at the SMTP server; none: no AUTH.")
    smtp_password: SecretStr | None = Field(default=None, description="Its password (never logged).")
    smtp_timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds an SMTP command may wait.")
    smtp_ca_file: str | None = Field(default=None, description="CA certificates to trust for the server's TLS "
                                                               "certificate (default: the system's).")
    dkim_domain: str | None = Field(default=None, description="Sign outgoing SMTP mail with DKIM for this domain "
                                                              "(d=); needs dkim_selector and dkim_private_key_file.")
    dkim_selector: str | None = Field(default=None, description="The DKIM selector (s=).")
    dkim_private_key_file: str | None = Field(default=None, description="PEM file of the DKIM private key.")
    unsubscribe_base_url: str | None = Field(
        default=None, pattern=r"^https://[^\s/]+(/[^\s]*)?$",
        description="The public https address of `agent serve` (e.g. https://mail.example.com): messages then "
                    "carry one-click List-Unsubscribe URLs (RFC 8058) and a visible unsubscribe link.")
    unsubscribe_secret: SecretStr | None = Field(
        default=None, description="Key that signs unsubscribe tokens (at least 16 characters); default: a random "
                                  "key kept in the data directory.")
    @field_validator("unsubscribe_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("needs at least 16 characters")
        return value

    unsubscribe_token_days: int = Field(default=365, ge=30, le=3650, description="Days an unsubscribe link works.")
    imap_host: str | None = Field(default=None, description="The IMAP server replies and bounces arrive at.")
    imap_port: int = Field(default=993, ge=1, le=65535)
    imap_ssl: bool = Field(default=True, description="Implicit TLS (port 993); false: plain (a local server).")
    imap_username: str | None = None
    imap_password: SecretStr | None = Field(default=None, description="Its password (never logged).")
    imap_folder: str = Field(default="INBOX")
    imap_timeout: float = Field(default=30.0, gt=0, le=600)
    inbound_webhook_token: SecretStr | None = Field(
        default=None, description="Shared secret a POST to /inbound must carry (X-Agent-Token); unset: the "
                                  "webhook is off.")
    plugins: str = Field(default="", description="Comma-separated modules whose `register(registry)` adds "
                                                 "agents and orchestrators (Celery workers load them too).")
    log_level: LogLevel = Field(
        default="WARNING", description="Log level of the CLI (logs are redacted); any case is accepted."
    )

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        reason = "must be auto or a number of processes from 0 to 64"
        if isinstance(value, bool):
            raise ValueError(reason)
        try:
            count = int(value)
        except (TypeError, ValueError):
            raise ValueError(reason) from None
        if not 0 <= count <= 64 or count != value and not isinstance(value, str):
            raise ValueError(reason)
        return count

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'agent.db'}"

    @property
    def uses_embedded_default(self) -> bool:
        return self.database_url is None

    @property
    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.home / "outbox"

    @property
    def plugin_modules(self) -> list[str]:
        return [name.strip() for name in self.plugins.split(",") if name.strip()]

    @property
    def wants_sample_data(self) -> bool:
        return self.sample_data == "on" or (self.sample_data == "auto" and self.uses_embedded_default)


def get_settings(**overrides: Any) -> Settings:
    """Resolve settings; a bad value raises ``ConfigurationError`` naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        field, reason = first_error(exc)
        raise ConfigurationError(f"setting {field or 'settings'}: {reason}") from None
