"""`streamproc simulate`: the seeded, labelled scenario set as JSON Lines files.

Writes transactions.jsonl, device_signals.jsonl and alerts.jsonl (ready for
`streamproc publish`), labels.jsonl (what a correct brief of each case says) and
manifest.json (the parameters, so the set can be made again).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamproc.contracts.records import iso, parse_timestamp
from streamproc.sim.labelled import DEFAULT_NOW_MS, KINDS, EvalSet, build_eval_set


def run_simulate(
    out: Path,
    *,
    seeds: list[int],
    per_kind: int,
    noise_accounts: int,
    noise_days: int,
    now: str | None,
) -> int:
    now_ms = DEFAULT_NOW_MS if now is None else _now(now)
    s = EvalSet()
    for seed in seeds:
        # One seed alone keeps the ids it always had; several are told apart by a tag.
        tag = "" if len(seeds) == 1 else f"s{seed}-"
        part = build_eval_set(
            seed,
            per_kind,
            now_ms=now_ms,
            noise_accounts=noise_accounts,
            noise_days=noise_days,
            tag=tag,
        )
        s.transactions += part.transactions
        s.signals += part.signals
        s.alerts += part.alerts
        s.labels += part.labels
        s.feedback += part.feedback
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Any]] = {
        "transactions": s.transactions,
        "device_signals": s.signals,
        "alerts": s.alerts,
        "labels": [label.to_json() for label in s.labels],
        "feedback": s.feedback,
    }
    for name, rows in files.items():
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {
        "seeds": seeds,
        "per_kind": per_kind,
        "noise_accounts": noise_accounts,
        "noise_days": noise_days,
        "now": iso(now_ms),
        "kinds": list(KINDS),
        "counts": {name: len(rows) for name, rows in files.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    events = sum(len(files[n]) for n in ("transactions", "device_signals", "alerts"))
    print(f"wrote {events} events and {len(s.labels)} labelled cases to {out}")
    return 0


def _now(value: str) -> int:
    if value == "now":
        import time

        return int(time.time() * 1000)
    return parse_timestamp(value, "--now")
