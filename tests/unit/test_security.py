"""Kafka security settings: checked together, mapped identically to both client stacks."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiokafka
import pytest
import trustme
from confluent_kafka import Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.kafka import security
from streamproc.kafka.clients import admin_config, producer_config

SECRET = "pa55-never-printed"


@pytest.fixture()
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("streamproc@example.internal")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "c.pem", "key": tmp_path / "c.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_maps_to_librdkafka_and_aiokafka_alike(
    mechanism: str, pki: dict[str, Path]
) -> None:
    s = Settings(
        kafka_bootstrap="kafka-0:9093,kafka-1:9093",
        kafka_security_protocol="sasl_ssl",
        kafka_sasl_mechanism=mechanism.lower(),
        kafka_sasl_username="svc-streamproc",
        kafka_sasl_password=SECRET,
        kafka_ssl_ca_file=pki["ca"],
    )
    auth = security.resolve(s)
    conf = admin_config(s)
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == mechanism
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc-streamproc", SECRET)
    assert conf["ssl.ca.location"] == str(pki["ca"])
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    Producer(producer_config(s))  # librdkafka accepts every key (it rejects unknown ones)

    kwargs = credentials_to_aiokafka_auth(security.faust_credentials(auth))
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "svc-streamproc"
    assert kwargs["sasl_plain_password"] == SECRET
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].check_hostname
    _aiokafka_accepts(kwargs)

    assert SECRET not in auth.describe() and SECRET not in repr(auth)
    assert "svc-streamproc" in auth.describe()


def _aiokafka_accepts(kwargs: Mapping[str, Any]) -> None:
    """aiokafka checks protocol, mechanism and context together when a client is built."""

    async def build() -> None:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="kafka-0:9093", **kwargs)
        await consumer.stop()

    asyncio.run(build())


def test_password_from_a_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    s = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password_file=secret_file,
    )
    assert admin_config(s)["sasl.password"] == SECRET
    assert "ssl.ca.location" not in admin_config(s)
    missing = s.model_copy(update={"kafka_sasl_password_file": tmp_path / "absent"})
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD_FILE cannot be read"):
        security.resolve(missing)


def test_mutual_tls_loads_the_client_certificate(pki: dict[str, Path]) -> None:
    s = Settings(
        kafka_bootstrap="kafka-0:9093",
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki["ca"],
        kafka_ssl_cert_file=pki["cert"],
        kafka_ssl_key_file=pki["key"],
        kafka_ssl_check_hostname=False,
    )
    conf = admin_config(s)
    assert conf["ssl.certificate.location"] == str(pki["cert"])
    assert conf["ssl.key.location"] == str(pki["key"])
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    Producer(producer_config(s))
    creds = security.faust_credentials(security.resolve(s))
    kwargs = credentials_to_aiokafka_auth(creds)
    assert kwargs["security_protocol"] == "SSL"
    _aiokafka_accepts(kwargs)
    ctx = kwargs["ssl_context"]
    assert not ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED
    assert "hostname NOT verified" in security.resolve(s).describe()


def test_plaintext_adds_nothing() -> None:
    s = Settings(kafka_bootstrap="k:9092")
    assert admin_config(s) == {"bootstrap.servers": "k:9092"}
    assert security.faust_credentials(security.resolve(s)) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs STREAMPROC_KAFKA_SASL_USERNAME"),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": SECRET}, "SASL credentials are set"),
        ({"kafka_ssl_ca_file": Path("/etc/hosts")}, "TLS files are set"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": Path("/etc/hosts")},
            "go together",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": Path("/nonexistent/ca.pem")},
            "KAFKA_SSL_CA_FILE names a file that does not exist",
        ),
    ],
)
def test_inconsistent_settings_say_what_to_fix(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        security.resolve(Settings(**fields))  # type: ignore[arg-type]
    assert SECRET not in str(err.value)


def test_a_file_that_is_not_a_key_fails_at_start(pki: dict[str, Path]) -> None:
    s = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cert_file=pki["cert"],
        kafka_ssl_key_file=pki["ca"],  # a certificate, not a key
    )
    with pytest.raises(ConfigError, match="could not be loaded"):
        security.faust_credentials(security.resolve(s))
