"""Topic declarations from topics/topics.yaml: partitions, replication, configs, roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamproc import data
from streamproc.errors import ConfigError

TOPICS_FILE = data.path("topics", "topics.yaml")
ROLES = frozenset({"input", "output", "dlq", "internal", "changelog"})


@dataclass(frozen=True)
class TopicSpec:
    name: str
    role: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)
    schema: str | None = None


def load_topics(path: Path = TOPICS_FILE) -> list[TopicSpec]:
    """Read the declarations; raises ConfigError naming the entry that is wrong."""
    try:
        doc: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read topic declarations {path}: {exc}") from exc
    defaults = doc.get("defaults", {})
    specs = []
    for i, entry in enumerate(doc.get("topics", [])):
        try:
            spec = TopicSpec(
                name=str(entry["name"]),
                role=str(entry["role"]),
                partitions=int(entry.get("partitions", defaults.get("partitions", 1))),
                replication_factor=int(
                    entry.get("replication_factor", defaults.get("replication_factor", 1))
                ),
                config={str(k): str(v) for k, v in (entry.get("config") or {}).items()},
                schema=entry.get("schema"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: topic entry #{i + 1} is incomplete ({exc})") from exc
        if spec.role not in ROLES:
            raise ConfigError(f"{path}: topic {spec.name} has unknown role {spec.role!r}")
        specs.append(spec)
    return specs


def changelog_limit(table: str, specs: list[TopicSpec] | None = None) -> int:
    """The `max.message.bytes` declared for `table`'s changelog topic: no state record
    of the table may be larger (Apache Kafka refuses it; the embedded broker does not)."""
    for spec in specs if specs is not None else load_topics():
        if spec.role == "changelog" and spec.name.endswith(f"-{table}-changelog"):
            limit = spec.config.get("max.message.bytes")
            if limit is None:
                raise ConfigError(f"{TOPICS_FILE}: {spec.name} declares no max.message.bytes")
            return int(limit)
    raise ConfigError(f"{TOPICS_FILE}: no changelog topic declared for table {table}")
