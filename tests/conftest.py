"""Shared fixtures: schemas, codec, scenario events in normalized form."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.records import from_json
from streamproc.contracts.schemas import SchemaSet
from streamproc.sim.scenario import Scenario, build_scenario

NOW_MS = 1_790_000_000_000
TXN_TOPIC = "fraud.transactions.v1"
SIG_TOPIC = "fraud.device-signals.v1"
ALERT_TOPIC = "fraud.alerts.v1"
FEEDBACK_TOPIC = "fraud.brief-feedback.v1"


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return SchemaSet()


@pytest.fixture()
def codec(schemas: SchemaSet) -> AvroCodec:
    return AvroCodec(schemas)


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    return build_scenario(seed=7, now_ms=NOW_MS)


def normalized(
    schemas: SchemaSet, topic: str, events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    schema = schemas.for_topic(topic)
    return [from_json(schema, e, now_ms=NOW_MS) for e in events]
