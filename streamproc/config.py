"""Settings: one frozen tree built at the entry point from env (STREAMPROC_*) and a config file."""

from __future__ import annotations

import os
from enum import StrEnum
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streamproc.errors import ConfigError
from streamproc.kafka.security import SaslMechanism, SecurityProtocol, read_secret

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE_ENV = "STREAMPROC_CONFIG_FILE"


class LLMProvider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    NONE = "none"


class OpenAIDialect(StrEnum):
    """Which OpenAI-compatible server `LLM_PROVIDER=openai` talks to (LLM_DIALECT)."""

    OPENAI = "openai"  # OpenAI, Azure OpenAI: max_completion_tokens
    COMPATIBLE = "compatible"  # vLLM, Ollama and other servers that know only max_tokens
    LLAMACPP = "llamacpp"  # llama.cpp's server: string bounds enforced by its grammar


class BriefPII(StrEnum):
    MASKED = "masked"
    RESTORED = "restored"
    REDACTED = "redacted"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class Topics(BaseSettings):
    """Topic names; the defaults are the product contract (SPEC)."""

    model_config = SettingsConfigDict(frozen=True)

    transactions: str = "fraud.transactions.v1"
    device_signals: str = "fraud.device-signals.v1"
    alerts: str = "fraud.alerts.v1"
    briefs: str = "fraud.case-briefs.v1"
    audit: str = "fraud.llm-audit.v1"
    dlq: str = "fraud.dlq.v1"
    settle: str = "streamproc-settle"

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.transactions, self.device_signals, self.alerts)


class Settings(BaseSettings):
    """Everything the product reads from its environment. Built once, passed down."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMPROC_", frozen=True, extra="ignore", case_sensitive=False
    )

    kafka_bootstrap: str = "127.0.0.1:9092"
    # Kafka security (streamproc.kafka.security checks them together at start-up).
    kafka_security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    kafka_sasl_mechanism: SaslMechanism = SaslMechanism.PLAIN
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_ca_file: Path | None = Field(None, description="None: the system trust store.")
    kafka_ssl_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    kafka_ssl_key_file: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_key_password_file: Path | None = None
    kafka_ssl_check_hostname: bool = True
    schema_registry_url: str | None = None
    app_id: str = Field("streamproc", description="Consumer group and faust app id.")

    llm_provider: LLMProvider = LLMProvider.NONE
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    llm_api_key_file: Path | None = None
    llm_dialect: OpenAIDialect = Field(
        OpenAIDialect.OPENAI, description="For LLM_PROVIDER=openai: the server's parameters."
    )
    llm_temperature: float | None = Field(
        None, ge=0, le=2, description="Unset: the provider's default (reasoning models need it)."
    )
    llm_max_output_tokens: int = Field(2000, ge=200, le=32_000)
    llm_timeout_s: float = 20.0
    llm_max_concurrency: int = Field(8, ge=1, description="LLM calls in flight per worker.")
    llm_max_prompt_tokens: int = Field(6000, ge=1000)
    llm_max_retries: int = Field(3, ge=0, le=10)
    llm_retry_after_cap_s: float = Field(20.0, ge=0)
    llm_case_deadline_s: float = Field(
        60.0, gt=0, description="Longest a case waits for the model before it falls back."
    )
    llm_breaker_threshold: int = Field(5, ge=1)
    llm_breaker_reset_s: float = Field(30.0, gt=0)
    llm_requests_per_minute: int = Field(0, ge=0, description="0 = no limit")
    llm_tokens_per_minute: int = Field(0, ge=0, description="0 = no limit")
    llm_daily_token_budget: int = Field(0, ge=0, description="0 = no budget")
    llm_price_prompt_per_1k: float = Field(0.0, ge=0, description="USD, for the cost estimate")
    llm_price_completion_per_1k: float = Field(0.0, ge=0)

    http_port: int = 8000
    case_settle_s: float = Field(5.0, ge=0, description="Wait after an alert before briefing.")
    case_after_s: float = Field(
        600.0, ge=0, description="Event-time horizon after the last alert that a case still takes."
    )
    lookback_h: float = Field(72.0, gt=0)
    max_events_per_account: int = Field(500, ge=10)
    case_max_wait_s: float = Field(
        60.0,
        ge=0,
        description="Extra wait past the settle delay for transactions an alert names, and "
        "while a case's input partitions are behind the alert (backlog, restart).",
    )
    case_retain_h: float = Field(72.0, gt=0, description="How long a briefed case is remembered.")
    state_sweep_interval_s: float = Field(
        300.0, gt=0, description="How often retired cases and idle windows are looked for."
    )
    brief_pii: BriefPII = BriefPII.MASKED

    data_dir: Path = Path(".streamproc")
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = Field(
        LogFormat.JSON, description="json: one object per line with case/brief ids; text: plain."
    )
    shutdown_grace_s: float = Field(
        15.0,
        ge=0,
        description="On SIGTERM, how long in-flight model calls may finish before their cases "
        "are handed back (keep it well under the pod's terminationGracePeriodSeconds).",
    )
    # Consumer-group timing. Kafka's defaults suit production; dev and tests set
    # them low because the first join waits about half the rebalance timeout.
    broker_rebalance_timeout_s: float = 60.0
    broker_session_timeout_s: float = 45.0
    broker_heartbeat_interval_s: float = 3.0
    broker_fetch_max_wait_ms: int = Field(
        20, ge=1, le=30_000, description="Longest a fetch waits for data (faust fixes 1500)."
    )
    table_standby_replicas: int = Field(
        0,
        ge=0,
        le=3,
        description="Workers keeping a warm copy of each state partition. 0 (the default): "
        "a partition that moves is restored from its changelog, and no worker spends CPU "
        "replaying the others' changelogs through faust's per-record path (about 55 µs a "
        "record, as much as the input it mirrors). 1 trades that CPU for faster failover.",
    )

    topics: Topics = Field(default_factory=Topics)

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("llm_base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

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
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            sources.append(_YamlLowerKeys(settings_cls, yaml_file=config_file))
        sources.append(file_secret_settings)
        return tuple(sources)

    def llm_endpoint(self) -> tuple[str, str]:
        """(base URL, model) of the configured provider; ConfigError when incomplete."""
        defaults = {
            LLMProvider.OPENAI: "https://api.openai.com/v1",
            LLMProvider.ANTHROPIC: "https://api.anthropic.com",
        }
        if self.llm_provider is LLMProvider.NONE:
            raise ConfigError("no LLM provider configured")
        if not self.llm_model:
            raise ConfigError(
                f"STREAMPROC_LLM_PROVIDER={self.llm_provider.value} needs STREAMPROC_LLM_MODEL"
            )
        return self.llm_base_url or defaults[self.llm_provider], self.llm_model

    def llm_api_key_value(self) -> str | None:
        """The API key from LLM_API_KEY or LLM_API_KEY_FILE; never logged."""
        key = self.llm_api_key.get_secret_value() if self.llm_api_key is not None else None
        return read_secret(key, self.llm_api_key_file, "LLM_API_KEY")


class _YamlLowerKeys(YamlConfigSettingsSource):
    """Config file with the same keys as the env vars, with or without prefix, any case."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        if not file_path.is_file():  # a missing file is an operator error, not an empty config
            raise ConfigError(f"config file {file_path} (from {CONFIG_FILE_ENV}) does not exist")
        raw = super()._read_file(file_path)
        out: dict[str, Any] = {}
        for key, value in (raw or {}).items():
            name = str(key).lower().removeprefix("streamproc_")
            out[name] = value
        return out
