"""`make bench`: measure the case engine against its ceiling and a peer; write a report.

Writes bench/results/report.md and report.json. Targets come from the case-engine
issue; the report states each measured figure against them, met or not.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import llm, stages
from bench.stages import LINKS_KEY
from bench.workload import events, produce_all

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    "engine_events_per_s": 40_000,  # issue 14
    "p99_ms": 250,
    "rss_mib": 1536,
    "p99_links_ms": 300,  # issue 25
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--accounts", type=int, default=200_000)
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument(
        "--only",
        choices=["engine", "latency", "llm"],
        help="one stage, printed as JSON, no report (for optimisation steps)",
    )
    ap.add_argument("--rate", type=float, default=3600.0, help="with --only latency")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="every stage on a small input, no peer (make test runs this so the bench "
        "cannot silently stop working; its figures mean nothing)",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.events, args.accounts, args.latency_seconds = 20_000, 2_000, 3.0
        args.skip_peer = True
    if args.only:
        return _only(args)
    work = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    t_all = time.monotonic()
    print(f"encoding {args.events} events over {args.accounts} accounts…", flush=True)
    records = list(events(args.events, args.accounts))
    result: dict[str, Any] = {
        "smoke": args.smoke,
        "input": {"events": args.events, "accounts": args.accounts},
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
    }

    broker = stages.fresh_broker(work / "broker.log")
    try:
        produce_all(broker.bootstrap, records)
        print("1/4 ceiling: plain confluent-kafka consumer + Avro decode", flush=True)
        result["ceiling"] = stages.ceiling(broker.bootstrap, args.events)
        print(f"    {result['ceiling']}", flush=True)
        print("2/4 case engine ingest with durable state (+ RSS)", flush=True)
        result["engine"] = stages.engine_ingest(broker.bootstrap, args.events, work)
        print(f"    {result['engine']}", flush=True)
        if not args.skip_peer:
            print("4/4 peer: Quix Streams, RocksDB state with changelog", flush=True)
            result["peer_quix"] = stages.peer_quix(broker.bootstrap, args.events, work)
            print(f"    {result['peer_quix']}", flush=True)
    finally:
        broker.stop()
    broker = stages.fresh_broker(work / "broker-links.log")
    try:  # the same input on a broker of its own: the group starts from the beginning
        produce_all(broker.bootstrap, records)
        print("2b/4 case engine ingest with linked accounts on (entity index)", flush=True)
        result["engine_links"] = stages.engine_ingest(
            broker.bootstrap, args.events, work, "state-links", STREAMPROC_ENTITY_KEY=LINKS_KEY
        )
        print(f"    {result['engine_links']}", flush=True)
    finally:
        broker.stop()

    rate = max(1.0, 0.5 * result["engine"]["events_per_s"])
    for row, extra in (("latency", {}), ("latency_links", {"STREAMPROC_ENTITY_KEY": LINKS_KEY})):
        broker = stages.fresh_broker(work / f"broker-{row}.log")
        try:
            print(f"3/4 alert-to-brief latency at 50% of max ({rate:.0f} events/s), {row}")
            result[row] = stages.latency(
                broker.bootstrap, rate, args.latency_seconds, work, args.accounts, **extra
            )
            print(f"    {result[row]}", flush=True)
        finally:
            broker.stop()
    print("5/5 LLM stage against a stand-in answering after 800 ms; prompt size", flush=True)
    result["llm"] = llm.run(smoke=args.smoke)
    peer = result.get("peer_quix", {})
    if peer.get("events_per_s"):
        result["engine_over_peer"] = round(
            result["engine"]["events_per_s"] / peer["events_per_s"], 3
        )
        result["engine_links_over_peer"] = round(
            result["engine_links"]["events_per_s"] / peer["events_per_s"], 3
        )
    result["wall_seconds"] = round(time.monotonic() - t_all, 1)
    _write(result, args.out)
    return 0


def _only(args: argparse.Namespace) -> int:
    if args.only == "llm":
        print(json.dumps(llm.run()))
        return 0
    work = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    broker = stages.fresh_broker(work / "broker.log")
    try:
        if args.only == "engine":
            produce_all(broker.bootstrap, list(events(args.events, args.accounts)))
            out = stages.engine_ingest(broker.bootstrap, args.events, work)
        else:
            out = stages.latency(
                broker.bootstrap, args.rate, args.latency_seconds, work, args.accounts
            )
    finally:
        broker.stop()
    print(json.dumps(out))
    return 0


def _llm_lines(r: dict[str, Any]) -> list[str]:
    at64 = next(
        (t for t in r["throughput"] if t["concurrency"] == 64 and not t.get("extra_cpu_ms")),
        None,
    )
    slow64 = next((t for t in r["throughput"] if t.get("extra_cpu_ms")), None)
    flat = r["prompt_tokens"][-1]["estimated_prompt_tokens"] <= r["budget_tokens"]
    lines = [
        "",
        f"LLM stage (the worker's LLM stage, briefer and client, claim checker on: its queue, "
        f"two cases under way per model slot, a call holding its slot only while it is with "
        f"the provider, the CPU steps on the brief CPU thread, the model brief encoded and "
        f"its audit record built; broker writes left out; stand-in provider in a process of "
        f"its own answering a true brief after {r['latency_s']} s; prompt budget "
        f"{r['budget_tokens']} tokens):",
        "",
        "| concurrency | CPU added per brief | cases | briefs/s | ideal (concurrency ÷ latency) "
        "| share | worker CPU ms per brief | sentences cut |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {t['concurrency']} | {t.get('extra_cpu_ms', 0):g} ms | {t['cases']} | "
        f"{t['briefs_per_s']} | {t['ideal_per_s']} | {t['share_of_ideal']:.0%} | "
        f"{t['worker_cpu_ms_per_brief']} | {t['sentences_cut']} |"
        for t in r["throughput"]
    ]
    if at64 is not None:
        lines += [
            "",
            f"At 64: {at64['share_of_ideal']:.0%} of ideal, target ≥ 80%: "
            f"{_verdict(at64['share_of_ideal'], 0.80, True)}.",
        ]
    if slow64 is not None:
        lines += [
            "",
            f"At 64 with {slow64['extra_cpu_ms']:g} ms of CPU added to each brief's guardrails "
            f"(a CPU half as fast: {slow64['worker_cpu_ms_per_brief']} ms a brief): "
            f"{slow64['share_of_ideal']:.0%} of ideal, target ≥ 80%: "
            f"{_verdict(slow64['share_of_ideal'], 0.80, True)}.",
        ]
    steps = [k for k in r["brief_work_ms"][0] if k != "events"]
    lines += [
        "",
        "CPU milliseconds one brief costs the worker, by step (the HTTP exchange is in the "
        "per-brief figure above):",
        "",
        "| case events | " + " | ".join(steps) + " |",
        "| --- | " + " | ".join("---" for _ in steps) + " |",
    ]
    lines += [
        f"| {w['events']} | " + " | ".join(str(w[k]) for k in steps) + " |"
        for w in r["brief_work_ms"]
    ]
    lines += [
        "",
        "| case events | estimated prompt tokens | events shown in full |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {t['events']:,} | {t['estimated_prompt_tokens']:,} | {t['events_in_prompt']} |"
        for t in r["prompt_tokens"]
    ]
    lines += ["", f"Prompt size flat past the budget: {'met' if flat else 'NOT met'}."]
    return lines


def _links_lines(r: dict[str, Any]) -> list[str]:
    """Linked accounts on (issue 25): ingest with the entity index, and alert→brief."""
    eng, lat = r["engine_links"], r["latency_links"]
    return [
        f"| case engine ingest, linked accounts on | {eng['events_per_s']:,} events/s "
        f"({eng['events_per_s'] / r['engine']['events_per_s']:.1%} of links off; "
        f"{eng['links_messages']:,.0f} entity index messages) | — | — |",
        f"| alert→brief p50 / p95 / p99 with links at {lat['achieved_rate']:,} events/s | "
        f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} / {lat['p99_ms']:.0f} ms "
        f"({lat['briefed']}/{lat['alerts']} briefed) | p99 < {TARGETS['p99_links_ms']} ms | "
        f"{_verdict(lat['p99_ms'], TARGETS['p99_links_ms'], False)} |",
    ]


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def _write(r: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(r, indent=2) + "\n")
    eng, ceil, lat = r["engine"], r["ceiling"], r["latency"]
    peer = r.get("peer_quix", {})
    lines = [
        "# streamproc benchmark"
        + (" (SMOKE RUN: small input, figures mean nothing)" if r["smoke"] else ""),
        "",
        f"Input: {r['input']['events']:,} events (3 transactions : 1 device signal) over "
        f"{r['input']['accounts']:,} accounts, Avro single-object encoded, 6 partitions, "
        f"embedded broker (Tansu, memory storage), {r['machine']['cpus']} cores, "
        f"Python {r['machine']['python']}. One run; wall time {r['wall_seconds']} s.",
        "",
        "| measure | value | target | verdict |",
        "| --- | --- | --- | --- |",
        f"| ceiling: confluent-kafka consumer + decode | {ceil['events_per_s']:,} events/s "
        "| — | — |",
        f"| case engine ingest, durable state | {eng['events_per_s']:,} events/s "
        f"({eng['events_per_s'] / ceil['events_per_s']:.1%} of ceiling) | "
        f"≥ {TARGETS['engine_events_per_s']:,} | "
        f"{_verdict(eng['events_per_s'], TARGETS['engine_events_per_s'], True)} |",
        f"| alert→brief p50 / p95 / p99 at {lat['achieved_rate']:,} events/s | "
        f"{lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} / {lat['p99_ms']:.0f} ms "
        f"({lat['briefed']}/{lat['alerts']} briefed) | p99 < {TARGETS['p99_ms']} ms | "
        f"{_verdict(lat['p99_ms'], TARGETS['p99_ms'], False)} |",
        *_links_lines(r),
        f"| worker RSS after {r['input']['accounts']:,} accounts | {eng['rss_mib']} MiB | "
        f"< {TARGETS['rss_mib']} MiB | {_verdict(eng['rss_mib'], TARGETS['rss_mib'], False)} |",
    ]
    if "events_per_s" in peer:
        lines.append(
            f"| peer: Quix Streams (RocksDB + changelog) | {peer['events_per_s']:,} events/s | "
            "— | — |"
        )
        lines.append(
            f"| engine / peer, same run | {r['engine_over_peer']:.2f} | ≥ 1.0 | "
            f"{_verdict(r['engine_over_peer'], 1.0, True)} |"
        )
        lines.append(
            f"| engine with links / peer, same run | {r['engine_links_over_peer']:.2f} | "
            f"≥ 1.0 | {_verdict(r['engine_links_over_peer'], 1.0, True)} |"
        )
    elif peer:
        lines.append(f"| peer: Quix Streams | failed: {peer.get('error', '')[:200]!r} | | |")
    lines += _llm_lines(r["llm"])
    lines += ["", "Raw figures: `report.json`. Re-run: `make bench`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
