"""Kafka security settings (SASL and TLS) resolved once, then mapped to both client stacks.

faust (aiokafka) takes a credentials object holding an `ssl.SSLContext`; librdkafka
(confluent-kafka: admin, producers, the changelog writer, `tail`) takes config keys.
Both are built from the same resolved `KafkaAuth`, so the two stacks cannot drift.
Secrets come from settings or secret files and are never put into messages or reprs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamproc.config import SaslMechanism, SecurityProtocol, Settings, read_secret
from streamproc.errors import ConfigError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


@dataclass(frozen=True)
class KafkaAuth:
    protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    mechanism: SaslMechanism = SaslMechanism.PLAIN
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # None: the system trust store
    cert_file: Path | None = None  # client certificate for mutual TLS
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)
    check_hostname: bool = True

    def describe(self) -> str:
        """One line for the start-up banner: what is used, never a secret."""
        parts = [self.protocol.value]
        if self.protocol.uses_sasl:
            parts.append(f"{self.mechanism.value} as {self.username}")
        if self.protocol.uses_tls:
            parts.append(f"CA {self.ca_file or 'system store'}")
            if self.cert_file:
                parts.append("client certificate")
            if not self.check_hostname:
                parts.append("hostname NOT verified")
        return ", ".join(parts)


def _readable(path: Path | None, name: str) -> Path | None:
    if path is not None and not path.is_file():
        raise ConfigError(f"STREAMPROC_{name} names a file that does not exist: {path}")
    return path


def resolve(settings: Settings) -> KafkaAuth:
    """Check the Kafka security settings together; ConfigError says which one to fix."""
    protocol = settings.kafka_security_protocol
    secret = settings.kafka_sasl_password
    password = read_secret(
        secret.get_secret_value() if secret is not None else None,
        settings.kafka_sasl_password_file,
        "KAFKA_SASL_PASSWORD",
    )
    key_secret = settings.kafka_ssl_key_password
    key_password = read_secret(
        key_secret.get_secret_value() if key_secret is not None else None,
        settings.kafka_ssl_key_password_file,
        "KAFKA_SSL_KEY_PASSWORD",
    )
    if protocol.uses_sasl and not (settings.kafka_sasl_username and password):
        raise ConfigError(
            f"STREAMPROC_KAFKA_SECURITY_PROTOCOL={protocol.value} needs "
            "STREAMPROC_KAFKA_SASL_USERNAME and STREAMPROC_KAFKA_SASL_PASSWORD (or _FILE)"
        )
    if not protocol.uses_sasl and (settings.kafka_sasl_username or password):
        raise ConfigError(
            "SASL credentials are set but STREAMPROC_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol.value}; use SASL_SSL (or SASL_PLAINTEXT) or unset them"
        )
    tls_files = (
        settings.kafka_ssl_ca_file,
        settings.kafka_ssl_cert_file,
        settings.kafka_ssl_key_file,
    )
    if not protocol.uses_tls and any(tls_files):
        raise ConfigError(
            "TLS files are set but STREAMPROC_KAFKA_SECURITY_PROTOCOL is "
            f"{protocol.value}; use SSL or SASL_SSL, or unset them"
        )
    if bool(settings.kafka_ssl_cert_file) != bool(settings.kafka_ssl_key_file):
        raise ConfigError(
            "STREAMPROC_KAFKA_SSL_CERT_FILE and STREAMPROC_KAFKA_SSL_KEY_FILE go together "
            "(mutual TLS needs both)"
        )
    return KafkaAuth(
        protocol=protocol,
        mechanism=settings.kafka_sasl_mechanism,
        username=settings.kafka_sasl_username,
        password=password,
        ca_file=_readable(settings.kafka_ssl_ca_file, "KAFKA_SSL_CA_FILE"),
        cert_file=_readable(settings.kafka_ssl_cert_file, "KAFKA_SSL_CERT_FILE"),
        key_file=_readable(settings.kafka_ssl_key_file, "KAFKA_SSL_KEY_FILE"),
        key_password=key_password,
        check_hostname=settings.kafka_ssl_check_hostname,
    )


def librdkafka_config(auth: KafkaAuth) -> dict[str, Any]:
    """confluent-kafka config keys for `auth` (empty for PLAINTEXT)."""
    if auth.protocol is SecurityProtocol.PLAINTEXT:
        return {}
    conf: dict[str, Any] = {"security.protocol": auth.protocol.value}
    if auth.protocol.uses_sasl:
        conf |= {
            "sasl.mechanism": auth.mechanism.value,
            "sasl.username": auth.username,
            "sasl.password": auth.password,
        }
    if auth.protocol.uses_tls:
        conf["ssl.endpoint.identification.algorithm"] = "https" if auth.check_hostname else "none"
        if auth.ca_file:
            conf["ssl.ca.location"] = str(auth.ca_file)
        if auth.cert_file and auth.key_file:
            conf["ssl.certificate.location"] = str(auth.cert_file)
            conf["ssl.key.location"] = str(auth.key_file)
            if auth.key_password:
                conf["ssl.key.password"] = auth.key_password
    return conf


def ssl_context(auth: KafkaAuth) -> ssl.SSLContext:
    """The TLS context aiokafka uses; files are loaded now, so a bad one fails at start."""
    try:
        ctx = ssl.create_default_context(
            cafile=str(auth.ca_file) if auth.ca_file else None,
        )
        if auth.cert_file and auth.key_file:
            ctx.load_cert_chain(str(auth.cert_file), str(auth.key_file), auth.key_password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"Kafka TLS files could not be loaded: {exc.__class__.__name__}") from exc
    ctx.check_hostname = auth.check_hostname
    if not auth.check_hostname:
        ctx.verify_mode = ssl.CERT_REQUIRED  # the chain is still verified
    return ctx


def faust_credentials(auth: KafkaAuth) -> CredentialsT | None:
    """faust's `broker_credentials` for `auth` (None for PLAINTEXT)."""
    import faust

    if auth.protocol is SecurityProtocol.PLAINTEXT:
        return None
    context = ssl_context(auth) if auth.protocol.uses_tls else None
    if auth.protocol.uses_sasl:
        return faust.SASLCredentials(
            username=auth.username,
            password=auth.password,
            mechanism=auth.mechanism.value,
            ssl_context=context,
        )
    assert context is not None
    return faust.SSLCredentials(context)
