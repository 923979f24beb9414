"""Exception tree of streamproc; every error the product raises derives from one root.

    StreamprocError
    ├── ConfigError                  operator-facing: bad settings or environment
    ├── TopologyError                topics missing or not co-partitioned
    ├── BrokerError                  embedded broker could not start
    ├── EventError                   permanent: one record is bad (goes to the DLQ)
    │   ├── EventDecodeError         bytes are not Avro we can read
    │   │   └── UnknownSchemaError   fingerprint or registry id not known
    │   │       └── RegistryUnavailableError  the registry did not answer for it
    │   ├── EventValidationError     decoded, but breaks the contract
    │   └── EventKeyError            no key, or not on its key's partition
    ├── BriefValidationError         permanent: a brief breaks its own contract
    └── LLMError                     the model as a dependency
        ├── LLMTransportError        retryable: connection, 408, 409, 5xx, 529
        ├── LLMTimeout               retryable
        ├── LLMRateLimited           retryable after `retry_after` seconds
        ├── LLMQuotaExhausted        permanent: 429 insufficient_quota; not retried
        ├── LLMRequestError          permanent: another 4xx (bad key, bad request)
        ├── LLMCircuitOpen           the breaker is open: no request was sent
        ├── LLMBudgetExhausted       the day's token budget is spent: no request was sent
        └── LLMOutputError           the answer is not the structured output asked for

Messages never quote field values: a record's content may be personal data.
"""

from __future__ import annotations


class StreamprocError(Exception):
    """Root of every error streamproc raises on purpose."""


class ConfigError(StreamprocError):
    """Settings or environment are wrong; the message says what to change."""


class TopologyError(StreamprocError):
    """Topics are missing or not co-partitioned; the worker refuses to run."""


class BrokerError(StreamprocError):
    """The embedded broker could not be started or reached."""


class EventError(StreamprocError):
    """One record cannot be used. Carries a short, bounded `reason` for metrics."""

    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class EventDecodeError(EventError):
    """The bytes are not an Avro record this worker can read."""

    reason = "decode_error"


class UnknownSchemaError(EventDecodeError):
    """The record names a writer schema (fingerprint or registry id) we do not know."""

    reason = "unknown_schema"


class RegistryUnavailableError(UnknownSchemaError):
    """The schema registry did not give the schema (it is away, or slow): the record is
    dead-lettered after a bounded wait, never decoded by guesswork."""

    reason = "registry_unavailable"


class EventValidationError(EventError):
    """The record decoded but breaks the data contract (a field is missing or out of range)."""

    reason = "validation_error"


class EventKeyError(EventError):
    """The record has no key, or sits on another partition than its key's (murmur2, as
    the Java client and Kafka Streams partition): its account would be split between
    workers. `reason` says which: missing_key or wrong_partition."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, field="key")
        self.reason = reason


class BriefValidationError(StreamprocError):
    """A brief does not satisfy its own contract."""


class LLMError(StreamprocError):
    """The language model failed as a dependency. `provider_message`: what the provider
    said of it, bounded and scrubbed of PII by the client (None when it said nothing).
    `slot_wait_ms`: how long the call waited for a free model slot before it was sent."""

    provider_message: str | None = None
    slot_wait_ms: int = 0


class LLMTransportError(LLMError):
    """Connection failure or a 5xx answer; retryable."""


class LLMTimeout(LLMError):
    """The provider did not answer in time; retryable."""


class LLMRateLimited(LLMError):
    """429 from the provider; retry after `retry_after` seconds (None when not given)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LLMQuotaExhausted(LLMError):
    """The account is out of quota (429 insufficient_quota): waiting will not help."""


class LLMRequestError(LLMError):
    """A 4xx other than 408/409/429: the request or the credentials are wrong."""


class LLMNoSlot(LLMError):
    """Every model slot (LLM_MAX_CONCURRENCY calls in flight) stayed busy for as long as
    a case may wait for one (LLM_QUEUE_MAX_WAIT_S); no request was sent."""


class LLMCircuitOpen(LLMError):
    """The circuit breaker is open after repeated failures; no request was sent."""


class LLMBudgetExhausted(LLMError):
    """The configured daily token budget is spent; briefs fall back until the next UTC day."""


class LLMOutputError(LLMError):
    """The provider answered, but not with the structured output asked for."""
