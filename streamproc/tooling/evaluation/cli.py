"""Brief quality on the labelled sets (`streamproc simulate`), compared with a stored baseline.

    python -m streamproc.tooling.evaluation [--set SPLIT=DIR ...] [--limit N]
                                            [--update-baseline] [--local-model DIR]

Two splits by default, reported separately, held-out first: development
(tests/eval/scenarios, tune on it) and held-out (tests/eval/heldout, seeds never used
while developing: never tune on it). Cases are built from the set's events the way the
worker builds them (windows, then `assemble_case`), briefed by the deterministic
generator, and, when STREAMPROC_LLM_PROVIDER names a model (or --local-model starts
llama.cpp's server), by the model through the same redaction, prompt, validation and
guardrails as in production; the model's own draft is scored too, before the guardrails.
The prompt is built for every case in either mode, so PII leaks into prompts and prompt
size are measured even without a model.

Gates: the hard zeros (PII leaks in prompts or briefs, successful injections), schema
validity, absolute MINIMUMS for the published briefs, and no regression past THRESHOLDS
against the baseline of the same mode, split and subset. Exit 0 when nothing fails, 1
otherwise; the reports and a quality card go to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from streamproc.config import LLMProvider, Settings
from streamproc.contracts.schemas import SchemaSet
from streamproc.tooling.evaluation import claims, real_drafts
from streamproc.tooling.evaluation.cases import brief_cases, build_cases
from streamproc.tooling.evaluation.gates import (
    DEFAULT_BASELINE,
    compare,
    load_baseline,
    mode_of,
    update_baseline,
)
from streamproc.tooling.evaluation.load import SPLITS, latest, load_set, spread
from streamproc.tooling.evaluation.report import quality_card, report_md, shown
from streamproc.tooling.evaluation.score import score

DEFAULT_OUT = Path("eval-results")  # in the folder it is run from (make eval: tests/eval/results)


def evaluate(
    settings: Settings, set_dir: Path, limit: int | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One labelled set, briefed in `settings`' mode: its metrics and one row per case."""
    schemas = SchemaSet()
    events, labels = load_set(set_dir)
    if limit is not None:
        labels = spread(labels, limit)
    cases = build_cases(settings, schemas, events)
    results = asyncio.run(brief_cases(settings, schemas, cases, labels))
    return score(results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamproc.tooling.evaluation", description=__doc__)
    p.add_argument(
        "--set",
        action="append",
        dest="sets",
        metavar="SPLIT=DIR",
        help="a labelled set to evaluate as SPLIT (repeatable; default: the built-in "
        "held-out and development sets, shipped with the package from tests/eval/)",
    )
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="SPLIT=DIR",
        help="a labelled set evaluated besides the others, e.g. analysts' decisions from "
        "`streamproc feedback export` (no baseline: the absolute minimums apply)",
    )
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--limit", type=int, default=None, help="a subset covering every kind")
    p.add_argument("--update-baseline", action="store_true")
    p.add_argument(
        "--local-model",
        type=Path,
        metavar="DIR",
        help="brief with the local model server in DIR (installed there on first use)",
    )
    args = p.parse_args(argv)
    if args.local_model is None:
        return run(args, Settings())
    from streamproc.llm import local

    local.install(args.local_model)
    deterministic = run(args, Settings(llm_provider=LLMProvider.NONE))  # the same cases
    log = args.local_model / "llama-server-eval.log"
    print(f"starting llama-server ({local.MODEL_NAME}); log: {log}")
    with local.serving(args.local_model, log) as server:
        settings = Settings(
            **local.SETTINGS,  # type: ignore[arg-type]
            llm_base_url=server.url,
            llm_model=server.model,
        )
        return max(deterministic, run(args, settings, about=local.MODEL_DESCRIPTION))


def run(args: argparse.Namespace, settings: Settings, about: str = "") -> int:
    """Evaluate every split in `settings`' mode; write the reports and the quality card."""
    sets = dict(_split_arg(v) for v in args.sets) if args.sets else dict(SPLITS)
    sets |= dict(_split_arg(v) for v in args.include)
    mode = mode_of(settings)
    subset = "all" if args.limit is None else f"limit-{args.limit}"
    out: dict[str, Any] = {"mode": mode, "subset": subset, "splits": {}}
    md = [f"# Brief evaluation: {mode}", ""]
    if mode != "deterministic":
        md += [f"Model: {about or settings.llm_model}.", ""]
        md += [f"Settings: {_model_line(settings)}.", ""]
        out["model"] = {"about": about, "settings": _model_line(settings)}
    failed = False
    for split, set_dir in sets.items():
        started = time.monotonic()
        metrics, rows = evaluate(settings, set_dir, args.limit)
        took = round(time.monotonic() - started, 1)
        baseline = load_baseline(args.baseline, mode, split, subset)
        failures = compare(metrics, baseline)
        out["splits"][split] = {
            "set": str(set_dir),
            "seconds": took,
            "metrics": metrics,
            "baseline": baseline,
            "failures": failures,
            "cases": rows,
        }
        checker = _checker_scores(settings, set_dir)
        failures += claims.failures(checker)
        failed = failed or bool(failures)
        out["splits"][split]["checker"] = checker
        md.append(report_md(mode, metrics, baseline, rows, failures, split))
        md.append(claims.report_md(checker, split))
        print(
            f"checker {split}: precision on deterministic texts "
            f"{checker['precision_deterministic']}, recall "
            + ", ".join(f"{k}={v}" for k, v in checker["recall"].items())
        )
        shown_metrics = {k: v for k, v in metrics.items() if k != "by_kind"}
        print(f"eval {split} ({mode}, {subset}, {took} s): " + _line(shown_metrics))
        for failure in failures:
            print(f"FAIL [{split}]: {failure}", file=sys.stderr)
    if mode == "deterministic" and not args.sets and not args.include:
        drafts = real_drafts.evaluate(settings)
        out["checker_on_model_drafts"] = drafts
        md.append(real_drafts.report_md(drafts))
        print(
            f"checker on the local model's drafts: precision {drafts['precision']} on "
            f"{drafts['true']} true sentences, {drafts['false_cut']} of {drafts['false']} "
            "false ones cut"
        )
        for failure in real_drafts.failures(drafts):
            failed = True
            print(f"FAIL [model drafts]: {failure}", file=sys.stderr)
    _write(args.out, out, md)
    if args.update_baseline:
        update_baseline(args.baseline, out)
        print(f"baseline updated: {args.baseline} [{mode}][*][{subset}]")
    return 1 if failed else 0


def _write(folder: Path, out: dict[str, Any], md: list[str]) -> None:
    """This mode's report (.md, .json), and the quality card of every mode's report of the
    same subset found in `folder`."""
    mode, subset = out["mode"], out["subset"]
    folder.mkdir(parents=True, exist_ok=True)
    name = "report" if mode == "deterministic" else "report-" + re.sub(r"[:/]", "-", mode)
    name += "" if subset == "all" else f"-{subset}"
    (folder / f"{name}.md").write_text("\n".join(md))
    (folder / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    found = [json.loads(f.read_text()) for f in sorted(folder.glob("report*.json"))]
    reports = {r["mode"]: r for r in found if r.get("subset") == subset}
    card = folder / ("quality-card" + ("" if subset == "all" else f"-{subset}") + ".md")
    card.write_text(quality_card(reports))
    print(f"report: {folder / name}.md; quality card: {card}")


def _checker_scores(settings: Settings, set_dir: Path) -> dict[str, Any]:
    """The claim checker on the hallucination corpus of this set's cases (no model)."""
    events, _ = load_set(set_dir)
    cases = build_cases(settings, SchemaSet(), events)
    return claims.score_checker(cases, latest(events))


def _split_arg(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    return (name, Path(path)) if sep else (Path(value).name, Path(value))


def _line(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in metrics.items())


def _model_line(settings: Settings) -> str:
    return (
        f"provider {settings.llm_provider.value}, dialect {settings.llm_dialect.value}, "
        f"model {settings.llm_model}, max output tokens {settings.llm_max_output_tokens}, "
        f"timeout {settings.llm_timeout_s} s, concurrency {settings.llm_max_concurrency}"
    )
