"""The labelled sets: the built-in splits, one set's events and labels, its own "now"."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from streamproc import data
from streamproc.contracts.records import parse_timestamp
from streamproc.sim.labelled import Label

EVAL_DIR = data.path("eval")
DEFAULT_SET = EVAL_DIR / "scenarios"  # development: tune detectors and prompts on this
HELD_OUT_SET = EVAL_DIR / "heldout"  # seeds never used while developing: never tune on it
SPLITS = {"held-out": HELD_OUT_SET, "development": DEFAULT_SET}
Events = dict[str, list[dict[str, Any]]]  # file name (transactions, ...) → its records


def load_set(path: Path) -> tuple[Events, list[Label]]:
    events = {
        name: [json.loads(line) for line in (path / f"{name}.jsonl").read_text().splitlines()]
        for name in ("transactions", "device_signals", "alerts")
    }
    decided = path / "feedback.jsonl"  # analysts' decisions, for linked accounts
    events["feedback"] = (
        [json.loads(line) for line in decided.read_text().splitlines()] if decided.exists() else []
    )
    labels = [
        Label(**json.loads(line)) for line in (path / "labels.jsonl").read_text().splitlines()
    ]
    return events, labels


def latest(events: Events) -> int:
    """The set's own "now" (its newest event), so an old set is not judged from today."""
    return max(
        parse_timestamp(e["occurred_at"], "occurred_at")
        for name, v in events.items()
        if name != "feedback"
        for e in v
    )


def spread(labels: list[Label], limit: int) -> list[Label]:
    """`limit` labels covering every kind (round robin), for the fast subset."""
    by_kind: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        by_kind[label.kind].append(label)
    out: list[Label] = []
    while len(out) < min(limit, len(labels)):
        for group in by_kind.values():
            if group and len(out) < limit:
                out.append(group.pop(0))
    return out
