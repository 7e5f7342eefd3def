"""Configuration: one TOML file plus ``LUCCS_``-prefixed environment overrides (``__`` for nesting).

Build it with :func:`load_settings` and pass it down; there is no module-level settings object.
Every key has a default so an empty file (or none) runs the system on loopback.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from shared.events import Component

CONFIG_ENV = "LUCCS_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field("luccs", pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(3, ge=1, description="Partitions of the topics created at startup.")

    def topic(self, name: str) -> str:
        """Full name of a contract topic, e.g. ``topic("availability")`` -> ``luccs.availability.v1``."""
        return f"{self.topic_prefix}.{name}.v1"

    @property
    def availability_topic(self) -> str:
        return self.topic("availability")

    @property
    def procedures_topic(self) -> str:
        return self.topic("procedures")

    @property
    def advisories_topic(self) -> str:
        return self.topic("advisories")

    @property
    def eos_topic(self) -> str:
        return self.topic("eos")

    @property
    def deliveries_topic(self) -> str:
        return self.topic("deliveries")

    @property
    def deadletter_topic(self) -> str:
        return self.topic("deadletter")


class ApiSettings(_Section):
    operator_tokens: list[SecretStr] = Field(default_factory=list)
    host: str = "127.0.0.1"


class TargetSettings(_Section):
    id: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._:-]+$")
    component: Component
    probe: Literal["http", "as4", "tcp", "tls", "domibus"] = "http"
    url: str = Field(..., min_length=1)
    interval_s: float | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    failure_threshold: int | None = Field(None, ge=1)
    success_threshold: int | None = Field(None, ge=1)


def _default_instance_id() -> str:
    return socket.gethostname() or "detector"


class DetectorSettings(_Section):
    instance_id: str = Field(default_factory=_default_instance_id, min_length=1)
    port: int = Field(8001, ge=0, le=65535)
    database_url: str | None = None
    interval_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    success_threshold: int = Field(2, ge=1)
    heartbeat_s: float = Field(15.0, gt=0, description="How often every target's state is re-published.")
    targets: list[TargetSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_target_ids(self) -> DetectorSettings:
        ids = [t.id for t in self.targets]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate detector target ids: {', '.join(duplicates)}")
        return self


class ProcedureSettings(_Section):
    port: int = Field(8002, ge=0, le=65535)
    database_url: str | None = None
    mode: Literal["auto", "confirm"] = "auto"
    stale_after_s: float = Field(60.0, gt=0)


class NotifierSettings(_Section):
    port: int = Field(8003, ge=0, le=65535)
    database_url: str | None = None
    servicedesk_email: str | None = None
    bureau_email: str | None = None
    allow_insecure_webhooks: bool = False
    allow_private_webhooks: bool = False
    webhook_timeout_s: float = Field(5.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    concurrency: int = Field(200, ge=1)


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=0, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    from_address: str = "luccs-fallback@localhost"


class Settings(BaseSettings):
    """The whole configuration of a luccs-fallback installation."""

    model_config = SettingsConfigDict(env_prefix="LUCCS_", env_nested_delimiter="__", extra="forbid")

    data_dir: Path = Field(Path("var"), description="Where default SQLite files live.")
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    procedure: ProcedureSettings = Field(default_factory=ProcedureSettings)
    notifier: NotifierSettings = Field(default_factory=NotifierSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init arguments; the environment overrides it.
        return env_settings, init_settings

    def database_url(self, service: Literal["detector", "procedure", "notifier"]) -> str:
        """The SQLAlchemy URL of a service's database: the configured one, or a SQLite file in data_dir."""
        configured: str | None = getattr(self, service).database_url
        if configured:
            return configured
        return f"sqlite+aiosqlite:///{self.data_dir / f'{service}.db'}"


class ConfigError(Exception):
    """The configuration cannot be loaded; the message says which file and which key."""


def load_settings(config_path: str | Path | None = None) -> Settings:
    """Load the TOML file (``config_path``, else ``$LUCCS_CONFIG``, else none) and apply env overrides."""
    path = config_path or os.environ.get(CONFIG_ENV)
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return Settings(**file_values)
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:10]
        )
        raise ConfigError(f"{path or 'configuration'}: {problems}") from exc
