"""Settings: one frozen tree built at the entry point from env (STREAMPROC_*) and a config file.

The ground floor: it imports nothing of streamproc but its errors, so every layer (Kafka
security included) can read settings without an import cycle. Only STREAMPROC_* variables
(and the config file) configure the worker: the nested models are plain models, read
only through Settings.
"""

from __future__ import annotations

import os
from enum import StrEnum
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streamproc.errors import ConfigError

CONFIG_FILE_ENV = "STREAMPROC_CONFIG_FILE"
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}
VariantKey = Literal["own", "primary", "none"]


class SecurityProtocol(StrEnum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)

    @property
    def uses_sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


def read_secret(value: str | None, file: Path | None, name: str) -> str | None:
    """A secret given inline (`name`) or in a file (`name`_FILE); ConfigError without quoting it."""
    if value is not None:
        return value
    if file is None:
        return None
    try:
        return file.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"STREAMPROC_{name}_FILE cannot be read ({exc.strerror}); "
            "mount the secret or unset the variable"
        ) from exc


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


class Variant(BaseModel):
    """A shadow or canary variant: what it changes of the primary's model settings.
    Unset fields keep the primary's; every variant has its own client, circuit breaker
    and budget, so a variant that trips falls back like the primary, alone. Its API key
    is its own `api_key_file`; without one, it shares the primary's key only when it talks
    to the primary's endpoint, and sends none anywhere else (a local server needs none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: LLMProvider | None = None
    base_url: str | None = None
    model: str | None = None
    dialect: OpenAIDialect | None = None
    prompt_version: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    api_key_file: Path | None = None
    max_concurrency: int | None = Field(None, ge=1)
    daily_token_budget: int | None = Field(None, ge=0)
    timeout_s: float | None = Field(None, gt=0)
    case_deadline_s: float | None = Field(None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


class Topics(BaseModel):
    """Topic names; the defaults are the product contract (SPEC). Set only through
    STREAMPROC_TOPICS (a JSON object) or the config file's `topics`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transactions: str = "fraud.transactions.v1"
    device_signals: str = "fraud.device-signals.v1"
    alerts: str = "fraud.alerts.v1"
    feedback: str = "fraud.brief-feedback.v1"
    briefs: str = "fraud.case-briefs.v1"
    shadow_briefs: str = "fraud.case-briefs.shadow.v1"
    audit: str = "fraud.llm-audit.v1"
    dlq: str = "fraud.dlq.v1"
    settle: str = "streamproc-settle"
    entity_index: str = "streamproc-entity-index"
    entity_links: str = "streamproc-entity-links"

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the worker consumes, co-partitioned by account_id."""
        return (self.transactions, self.device_signals, self.alerts, self.feedback)

    @property
    def events(self) -> tuple[str, str]:
        """The account's history a case is built from."""
        return (self.transactions, self.device_signals)


class Settings(BaseSettings):
    """Everything the product reads from its environment. Built once, passed down."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMPROC_", frozen=True, extra="ignore", case_sensitive=False
    )

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Brokers, comma-separated host:port."
    )
    # Kafka security (streamproc.kafka.security checks them together at start-up).
    kafka_security_protocol: SecurityProtocol = Field(
        SecurityProtocol.PLAINTEXT, description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        SaslMechanism.PLAIN, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_sasl_password_file: Path | None = Field(
        None, description="A file holding the SASL password (a mounted Secret)."
    )
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA bundle to verify the brokers; unset: the system trust store."
    )
    kafka_ssl_cert_file: Path | None = Field(
        None, description="Client certificate, PEM (mutual TLS); needs KAFKA_SSL_KEY_FILE."
    )
    kafka_ssl_key_file: Path | None = Field(None, description="Client key, PEM (mutual TLS).")
    kafka_ssl_key_password: SecretStr | None = Field(
        None, description="Passphrase of the client key."
    )
    kafka_ssl_key_password_file: Path | None = Field(
        None, description="A file holding the client key's passphrase."
    )
    kafka_ssl_check_hostname: bool = Field(
        True, description="Verify the broker's name against its certificate."
    )
    schema_registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry: records written with its framing (subject "
        "<topic>-value); unset: Avro single-object encoding. Both are decoded either way.",
    )
    app_id: str = Field(
        "streamproc", description="Consumer group id, and the prefix of the state topics."
    )

    llm_provider: LLMProvider = Field(
        LLMProvider.NONE,
        description="openai (any OpenAI-compatible server), anthropic, or none: "
        "deterministic briefs only, said at start-up.",
    )
    llm_base_url: str | None = Field(
        None,
        description="Endpoint; unset: https://api.openai.com/v1 or https://api.anthropic.com.",
    )
    llm_model: str | None = Field(None, description="Model id; needed with a provider.")
    llm_api_key: SecretStr | None = Field(None, description="API key of the provider.")
    llm_api_key_file: Path | None = Field(None, description="A file holding the API key.")
    llm_dialect: OpenAIDialect = Field(
        OpenAIDialect.OPENAI,
        description="For LLM_PROVIDER=openai, the parameters the server takes: openai "
        "(OpenAI, Azure; max_completion_tokens), compatible (vLLM, Ollama: max_tokens) or "
        "llamacpp (llama.cpp's server: adds string bounds its grammar builds).",
    )
    llm_temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Sent only when set; unset: the provider's default (reasoning models "
        "accept no other).",
    )
    llm_max_output_tokens: int = Field(
        2000, ge=200, le=32_000, description="Completion limit of one call."
    )
    llm_timeout_s: float = Field(20.0, gt=0, description="Timeout of one HTTP call.")
    llm_max_concurrency: int = Field(
        8,
        ge=1,
        description="Model calls in flight per worker (model slots). A call holds its slot "
        "only while it is with the provider; twice as many cases are under way, the next "
        "one's prompt ready and the last one's guardrails being checked.",
    )
    llm_max_prompt_tokens: int = Field(
        6000, ge=1000, description="The case is compacted to fit this estimate."
    )
    llm_max_retries: int = Field(
        3, ge=0, le=10, description="Retries of a failed call (backoff with jitter)."
    )
    llm_retry_after_cap_s: float = Field(
        20.0, ge=0, description="Longest Retry-After honoured; longer: fall back."
    )
    llm_case_deadline_s: float = Field(
        60.0,
        gt=0,
        description="Longest a case waits for the model, retries included, before the "
        "deterministic brief goes out; counted from the call's taking a model slot.",
    )
    llm_queue_max_wait_s: float = Field(
        30.0,
        gt=0,
        description="Longest a due case waits for a free model slot (LLM_MAX_CONCURRENCY "
        "in use) before its deterministic brief goes out (fallback_reason queue_timeout).",
    )
    llm_breaker_threshold: int = Field(
        5, ge=1, description="Failed calls in a row that open the circuit."
    )
    llm_breaker_reset_s: float = Field(
        30.0, gt=0, description="How long the circuit stays open before it probes again."
    )
    llm_requests_per_minute: int = Field(
        0, ge=0, description="Local limit on model calls per minute; 0: none."
    )
    llm_tokens_per_minute: int = Field(
        0, ge=0, description="Local limit on estimated tokens per minute; 0: none."
    )
    llm_daily_token_budget: int = Field(
        0,
        ge=0,
        description="Tokens a worker may use per UTC day, then deterministic briefs; 0: none.",
    )
    llm_price_prompt_per_1k: float | None = Field(
        None,
        ge=0,
        description="USD per 1,000 prompt tokens, for streamproc_llm_cost_usd_total; set "
        "with the completion price, it wins over the price files.",
    )
    llm_price_completion_per_1k: float | None = Field(
        None, ge=0, description="USD per 1,000 completion tokens (see the prompt price)."
    )
    llm_prompt_version: str = Field(
        "brief-v1", description="The primary's prompt: prompts/<version>.yaml."
    )
    llm_shadow: Variant | None = Field(
        None,
        description="A shadow variant, as a JSON object of the model settings it changes "
        '(e.g. {"prompt_version": "brief-v2"} or {"model": "gpt-4.1-mini"}; keys: provider, '
        "base_url, model, dialect, prompt_version, temperature, api_key_file, "
        "max_concurrency, daily_token_budget, timeout_s, case_deadline_s). It briefs every "
        "case the model briefs, to fraud.case-briefs.shadow.v1 only: never to analysts. "
        "Its API key is its own api_key_file; without one it shares the primary's key only "
        "at the primary's provider and endpoint, and sends none elsewhere (said at start-up).",
    )
    llm_canary: Variant | None = Field(
        None,
        description="A canary variant (same JSON form as the shadow's): it writes the "
        "analysts' brief of LLM_CANARY_SHARE of the cases.",
    )
    llm_canary_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of cases the canary briefs, chosen by a stable hash of case_id "
        "(the same case always goes the same way). 0: none; rollback is setting it to 0.",
    )
    llm_prices_file: Path | None = Field(
        None,
        description="A YAML price list of the same shape as the shipped one "
        "(streamproc/data/llm_prices.yaml); its entries win over the shipped ones. "
        "Without a price for the model, cost is not estimated and the worker says so.",
    )

    http_port: int = Field(8000, description="Port of /metrics, /healthz and /readyz.")
    case_settle_s: float = Field(
        5.0,
        ge=0,
        description="Wait after an alert before briefing, so late events of the case arrive.",
    )
    case_after_s: float = Field(
        600.0, ge=0, description="Event-time horizon after the last alert that a case still takes."
    )
    lookback_h: float = Field(
        72.0, gt=0, description="Event-time window of account history kept and put in a case."
    )
    max_events_per_account: int = Field(
        500, ge=10, description="Events kept per account; the oldest go, and the brief says so."
    )
    entity_key: SecretStr | None = Field(
        None,
        description="Secret of the entity index's keyed hashes (at least 16 bytes, the same "
        "on every worker of the group); unset: no linked accounts, said at start-up.",
    )
    entity_key_file: Path | None = Field(None, description="A file holding ENTITY_KEY.")
    links_max_wait_ms: int = Field(
        2000,
        ge=0,
        description="How long a due case waits for the entity index's answers; past it the "
        "brief goes out with a data gap naming the entities not answered.",
    )
    links_lookback_h: float = Field(
        840.0,
        gt=0,
        description="How long the entity index remembers an account seen with an entity "
        "(35 days: a landlord paid monthly is an established payee, not a new one).",
    )
    case_max_wait_s: float = Field(
        60.0,
        ge=0,
        description="Extra wait past the settle delay for transactions an alert names, and "
        "while a case's input partitions are behind the alert (backlog, restart).",
    )
    case_retain_h: float = Field(
        72.0,
        gt=0,
        description="How long a briefed case is remembered: a later alert within it makes "
        "version + 1, after it a new case at version 1.",
    )
    state_sweep_interval_s: float = Field(
        300.0, gt=0, description="How often retired cases and idle windows are looked for."
    )
    brief_pii: BriefPII = Field(
        BriefPII.MASKED,
        description="How PII appears in a model-written brief: masked (last digits), "
        "restored (real values, for case tools allowed to show them) or redacted "
        "(placeholders).",
    )

    data_dir: Path = Field(Path(".streamproc"), description="Local working files.")
    log_level: LogLevel = Field(
        LogLevel.INFO, description="debug, info, warning, error or critical."
    )
    log_format: LogFormat = Field(
        LogFormat.JSON, description="json: one object per line with case/brief ids; text: plain."
    )
    shutdown_grace_s: float = Field(
        15.0,
        ge=0,
        description="On SIGTERM, how long in-flight model calls may finish before their cases "
        "are handed back (keep it well under the pod's terminationGracePeriodSeconds).",
    )
    # Consumer-group timing. Dev and tests set them low: the embedded broker holds a
    # JoinGroup until half the session timeout has passed.
    broker_rebalance_timeout_s: float = Field(
        60.0, gt=0, description="Consumer-group rebalance timeout (dev and tests: 2)."
    )
    broker_session_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Consumer-group session timeout: how long a worker that died unseen "
        "(kill -9, node lost) holds its partitions before the group moves them; the larger "
        "part of failover. Kafka's default is 45; its brokers accept 6 and up "
        "(group.min.session.timeout.ms).",
    )
    broker_heartbeat_interval_s: float = Field(
        3.0, gt=0, description="Consumer-group heartbeat interval (a third of the session)."
    )
    group_instance_id: str | None = Field(
        None,
        description="Static group membership (KIP-345): a stable, unique id per worker, "
        "such as a StatefulSet pod's name. A worker restarted within the session timeout "
        "gets its partitions back without a rebalance. Leave unset where names change on "
        "every start (a Deployment's pods) and on the embedded broker, whose static "
        "membership rebalances in a loop.",
    )
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

    topics: Topics = Field(
        default_factory=Topics,
        description="Topic names, as a JSON object with any of the keys below; the "
        "defaults are the product contract.",
    )

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
        if self.llm_provider is LLMProvider.NONE:
            raise ConfigError("no LLM provider configured")
        if not self.llm_model:
            raise ConfigError(
                f"STREAMPROC_LLM_PROVIDER={self.llm_provider.value} needs STREAMPROC_LLM_MODEL"
            )
        return self._base_url(), self.llm_model

    def _base_url(self, variant: Variant | None = None) -> str:
        """The endpoint the primary (or `variant`) talks to, defaults included."""
        provider = (variant and variant.provider) or self.llm_provider
        if variant is not None and variant.base_url:
            return variant.base_url
        if variant is not None and provider is not self.llm_provider:
            return DEFAULT_BASE_URLS.get(provider.value, "")
        return self.llm_base_url or DEFAULT_BASE_URLS.get(provider.value, "")

    def variant_api_key(self, variant: Variant) -> VariantKey:
        """Which key `variant` sends: its own file, the primary's (same provider and
        endpoint, so the same account), or none."""
        if variant.api_key_file is not None:
            return "own"
        same_provider = variant.provider in (None, self.llm_provider)
        return (
            "primary" if same_provider and self._base_url(variant) == self._base_url() else "none"
        )

    def for_variant(self, variant: Variant) -> Settings:
        """These settings with the variant's model settings in place of the primary's;
        the primary's API key goes only where the primary's goes (variant_api_key)."""
        # Each field of a Variant stands for the setting of the same name after "llm_".
        update: dict[str, Any] = {
            f"llm_{k}": v for k, v in variant.model_dump(exclude_none=True).items()
        }
        if self.variant_api_key(variant) != "primary":
            update["llm_api_key"] = None  # its own key file, or no key at all
            update.setdefault("llm_api_key_file", None)
        return self.model_copy(update={**update, "llm_shadow": None, "llm_canary": None})

    def entity_key_value(self) -> bytes | None:
        """The entity index's secret from ENTITY_KEY or ENTITY_KEY_FILE; never logged."""
        key = self.entity_key.get_secret_value() if self.entity_key is not None else None
        value = read_secret(key, self.entity_key_file, "ENTITY_KEY")
        return value.encode() if value else None

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
