"""Two variants side by side on the same cases: the primary and the configured shadow or
canary variant (STREAMPROC_LLM_SHADOW / STREAMPROC_LLM_CANARY), every metric of the
evaluation for each, per split.

    python -m streamproc.tooling.evaluation.compare --variant shadow [--limit N] [--out DIR]

Writes DIR/comparison-<variant>.md and .json. It decides nothing: a prompt or model
reaches analysts through the canary share, set by a person reading this and the
feedback metrics. Exit 1 when the variant breaks a hard gate the primary keeps (a PII
leak, an injection, invalid output) or falls below an absolute minimum.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streamproc.config import Settings
from streamproc.tooling.evaluation import gates
from streamproc.tooling.evaluation.cli import DEFAULT_OUT, evaluate
from streamproc.tooling.evaluation.load import SPLITS

SHOWN = (
    "cases",
    "reason_precision",
    "reason_recall",
    "risk_agreement",
    "evidence_grounding",
    "evidence_support",
    "evidence_recall",
    "schema_validity",
    "fallback_rate",
    "prompt_tokens_mean",
    "pii_leaks_prompt",
    "pii_leaks_brief",
    "injection_attempts_draft",
    "injection_successes",
)


def side_by_side(
    settings: Settings, name: str, sets: dict[str, Path], limit: int | None
) -> dict[str, Any]:
    """For each split: the primary's metrics, the variant's, and the variant's failures."""
    variant = settings.llm_canary if name == "canary" else settings.llm_shadow
    if variant is None:
        raise SystemExit(f"no {name} variant configured: set STREAMPROC_LLM_{name.upper()}")
    other = settings.for_variant(variant)
    out: dict[str, Any] = {
        "primary": {"mode": gates.mode_of(settings), "prompt_version": settings.llm_prompt_version},
        name: {"mode": gates.mode_of(other), "prompt_version": other.llm_prompt_version},
        "splits": {},
    }
    for split, set_dir in sets.items():
        primary, _ = evaluate(settings, set_dir, limit)
        candidate, _ = evaluate(other, set_dir, limit)
        out["splits"][split] = {
            "primary": primary,
            name: candidate,
            "failures": gates.compare(candidate, None),
        }
    return out


def markdown(result: dict[str, Any], name: str) -> str:
    p, v = result["primary"], result[name]
    lines = [
        f"# Primary and {name}, side by side",
        "",
        f"Primary: {p['mode']}, prompt {p['prompt_version']}. "
        f"{name.capitalize()}: {v['mode']}, prompt {v['prompt_version']}. Same cases.",
        "",
    ]
    for split, r in result["splits"].items():
        lines += [
            f"## {split}",
            "",
            f"| metric | primary | {name} | change |",
            "| --- | --- | --- | --- |",
        ]
        for key in SHOWN:
            a, b = r["primary"].get(key), r[name].get(key)
            change = "" if a is None or b is None else f"{b - a:+.3g}"
            lines.append(f"| {key} | {_fmt(a)} | {_fmt(b)} | {change} |")
        failures = r["failures"]
        lines += ["", f"{name.capitalize()} failures: " + ("; ".join(failures) or "none"), ""]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m streamproc.tooling.evaluation.compare", description=__doc__
    )
    p.add_argument("--variant", choices=("shadow", "canary"), required=True)
    p.add_argument("--limit", type=int, default=None, help="a subset covering every kind")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    result = side_by_side(Settings(), args.variant, dict(SPLITS), args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"comparison-{args.variant}"
    (args.out / f"{name}.md").write_text(markdown(result, args.variant))
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    failed = [f for r in result["splits"].values() for f in r["failures"]]
    for failure in failed:
        print(f"FAIL [{args.variant}]: {failure}", file=sys.stderr)
    print(f"comparison: {args.out / name}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
