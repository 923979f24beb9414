"""docs/configuration.md, generated from `Settings`: every key, its default and meaning.

    python -m streamproc.config_reference > docs/configuration.md   (make docs)

A test compares the file with this output, so a setting added without its line fails.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from streamproc.config import CONFIG_FILE_ENV, Settings, Topics

PREFIX = "STREAMPROC_"
# Sections of the reference: (title, field-name prefixes), first match wins.
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka", ("kafka_", "schema_registry_", "app_id", "topics")),
    ("The model", ("llm_",)),
    ("Cases and state", ("case_", "lookback_h", "max_events_", "state_", "brief_pii")),
    ("Engine tuning", ("broker_", "table_")),
    ("The worker", ("",)),
)

INTRO = f"""# Configuration

Every setting is an environment variable with the prefix `{PREFIX}`, or the same key
(with or without the prefix, any case) in a YAML file named by `{CONFIG_FILE_ENV}`; the
environment wins over the file. A value that does not parse, or settings that do not
fit together, stop the worker at start with a message naming the setting (never a
secret's value).

Secrets (marked *secret*) are never logged. Each can come from a file instead, through
the setting of the same name ending in `_FILE` (how the Helm chart mounts Kubernetes
Secrets); give one or the other.

Generated from `streamproc/config.py` by `make docs`; do not edit by hand.
"""


def render() -> str:
    fields = Settings.model_fields
    secrets = {name for name, info in fields.items() if _is_secret(info)}
    by_section: dict[str, list[str]] = {title: [] for title, _ in SECTIONS}
    for name in fields:
        title = next(t for t, prefixes in SECTIONS if name.startswith(prefixes))
        by_section[title].append(name)
    out = [INTRO]
    for title, names in by_section.items():
        out += [f"## {title}", "", "| key | default | meaning |", "| --- | --- | --- |"]
        out += [_row(name, fields[name], secrets) for name in names]
        if "topics" in names:
            out += ["", _topics()]
        out.append("")
    return "\n".join(out)


def _row(name: str, info: FieldInfo, secrets: set[str]) -> str:
    meaning = _description(name, info)
    if name in secrets:
        meaning = f"*secret*; or `{PREFIX}{name.upper()}_FILE`. {meaning}"
    elif name.endswith("_file") and name.removesuffix("_file") in secrets:
        meaning = f"{meaning} Instead of `{PREFIX}{name.removesuffix('_file').upper()}`."
    return f"| `{PREFIX}{name.upper()}` | {_default(info)} | {meaning} |"


def _topics() -> str:
    names = ", ".join(f"`{key}` ({info.default})" for key, info in Topics.model_fields.items())
    return (
        f"`{PREFIX}TOPICS` keys and their defaults: {names}. For example "
        f'`{PREFIX}TOPICS=\'{{"briefs": "risk.case-briefs.v1"}}\'`.'
    )


def _description(name: str, info: FieldInfo) -> str:
    if not info.description:
        raise ValueError(f"setting {name} has no description: say what it means")
    return " ".join(info.description.split()).replace("|", "\\|")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return "see below"
    value: Any = info.default
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f") if value >= 10_000 else str(value)
    if isinstance(value, Path):
        value = str(value)
    return f"`{value}`"


def _is_secret(info: FieldInfo) -> bool:
    return SecretStr in (info.annotation, *get_args(info.annotation))


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
