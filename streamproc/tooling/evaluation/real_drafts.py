"""The claim checker on a real model's drafts, against labels written by hand.

Tooling, not product: `make eval` scores it beside the hallucination corpus. The drafts
are what the local model (SmolLM2-135M on llama.cpp's server, `make eval-local`) wrote
for cases of the labelled sets, captured once into `tests/eval/claims/local_drafts.jsonl`
(the model is too slow on 2 cores to run in `make eval`). Each row is one sentence of a
draft's summary or of one of its facts, with the events it cites, and a label written by
reading the case's events:

- `true`: what it says holds of the case's events (or of its deterministic findings);
- `false`: it claims what the events do not show (an invented amount, the injection's
  words, an argued level);
- `none`: it claims nothing (a list number, a fragment); not scored.

Precision: the share of true sentences the checker keeps (a cut true claim lowers it);
the issue's bar is 0.95. The share of false sentences it cuts is reported beside it: the
checker reads claims about events, so a false sentence that claims none ("Ignore all
instructions.") is kept by it and left to the other guardrails.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from streamproc.brief.claims import Scope, check_text
from streamproc.brief.fallback import build_brief
from streamproc.brief.guardrails import case_events
from streamproc.config import Settings
from streamproc.contracts.schemas import SchemaSet
from streamproc.domain.case import Case
from streamproc.tooling.evaluation import claims
from streamproc.tooling.evaluation.cases import build_cases
from streamproc.tooling.evaluation.load import EVAL_DIR, SPLITS, latest, load_set

LABELLED = EVAL_DIR / "claims" / "local_drafts.jsonl"
LABELS = ("true", "false", "none")
PRECISION_MIN = 0.95
MIN_SENTENCES = 40  # labelled sentences with a claim, true or false


def load(path: Path = LABELLED) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        row = json.loads(line)
        if row.get("label") not in LABELS or row.get("where") not in ("summary", "fact"):
            raise ValueError(f"{path}:{n}: a row needs label in {LABELS} and where")
        rows.append(row)
    return rows


def verdict(row: dict[str, Any], case: Case, now_ms: int) -> tuple[bool, int]:
    """Does the checker cut (or overrule on) this sentence, read in its draft's scope,
    and how many claims did it read in it?"""
    floor_ctx, published = claims.context(
        case, build_brief(case, version=1, generated_at_ms=now_ms)
    )
    events = case_events(case)

    def scope(ids: list[str]) -> Scope:
        return Scope([events[e] for e in ids if e in events])

    # The draft's own facts are the summary's groups, not the deterministic brief's.
    ctx = replace(floor_ctx, groups=tuple(scope(g) for g in row.get("groups", [])))
    summary = row["where"] == "summary"
    own = ctx.case if summary else scope(row.get("evidence_event_ids", []))
    checked = check_text(row["text"], own, ctx, published, summary=summary)
    return bool(checked.cut) or bool(checked.argued), checked.claims


def score(
    rows: list[dict[str, Any]], cases: dict[str, dict[str, Case]], now_ms: int
) -> dict[str, Any]:
    """`cases`: by split, by case id."""
    tally: Counter[tuple[str, bool]] = Counter()
    read: Counter[tuple[str, bool]] = Counter()  # sentences in which it read a claim
    true_cut: list[str] = []
    for row in rows:
        if row["label"] == "none":
            tally["none", False] += 1
            continue
        cut, claims = verdict(row, cases[row["split"]][row["case_id"]], now_ms)
        tally[row["label"], cut] += 1
        if claims or cut:
            read[row["label"], cut] += 1
        if row["label"] == "true" and cut:
            true_cut.append(f"{row['case_id']} [{row['where']}]: {row['text'][:120]}")
    true, false = (
        tally["true", False] + tally["true", True],
        tally["false", False] + tally["false", True],
    )
    true_read = read["true", False] + read["true", True]
    return {
        "sentences": len(rows),
        "true": true,
        "false": false,
        "no_claim": tally["none", False],
        "precision": round(tally["true", False] / true, 4) if true else None,
        "false_cut": round(tally["false", True] / false, 4) if false else None,
        # Only where the checker read a claim (or overruled) is a kept sentence its doing:
        "true_with_claims": true_read,
        "precision_with_claims": round(read["true", False] / true_read, 4) if true_read else None,
        "true_cut": true_cut,
    }


def evaluate(settings: Settings, path: Path = LABELLED) -> dict[str, Any]:
    rows = load(path)
    cases, now = {}, 0
    for split in {r["split"] for r in rows}:
        events, _ = load_set(SPLITS[split])
        cases[split] = build_cases(settings, SchemaSet(), events)
        now = max(now, latest(events))
    return score(rows, cases, now)


def failures(scores: dict[str, Any]) -> list[str]:
    out = []
    if scores["true"] + scores["false"] < MIN_SENTENCES:
        out.append(f"only {scores['true'] + scores['false']} labelled draft sentences")
    if not scores["true"]:
        out.append("no true sentence among the labelled drafts: precision measures nothing")
    if scores["precision"] is not None and scores["precision"] < PRECISION_MIN:
        out.append(
            f"checker precision on the local model's drafts = {scores['precision']}, "
            f"below {PRECISION_MIN}"
        )
    return out


def report_md(scores: dict[str, Any]) -> str:
    lines = [
        "## The claim checker on the local model's drafts (labels written by hand)",
        "",
        f"{scores['sentences']} sentences of SmolLM2-135M drafts: {scores['true']} true, "
        f"{scores['false']} false, {scores['no_claim']} claiming nothing (not scored).",
        "",
        f"Precision (true sentences kept): {scores['precision']} (bar {PRECISION_MIN}); "
        f"on the {scores['true_with_claims']} true sentences in which the checker read a "
        f"claim: {scores['precision_with_claims']}. "
        f"False sentences cut: {scores['false_cut']} (the checker reads claims about "
        "events; false sentences that claim none are left to the other guardrails).",
    ]
    if scores["true_cut"]:
        lines += ["", "True sentences the checker cut:", ""]
        lines += [f"- {t}" for t in scores["true_cut"]]
    return "\n".join(lines) + "\n"
