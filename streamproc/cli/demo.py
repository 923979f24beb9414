"""`streamproc demo`: embedded broker, topics, a worker, the synthetic scenario, briefs printed.

Exits 0 once every case of the scenario is briefed (with its expected number of
versions); `--follow` keeps printing briefs until Ctrl-C. Children die with us.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from streamproc.brief.render import render_brief
from streamproc.cli.kafkaio import make_codec, produce_raw, publish_events, read_records
from streamproc.config import LLMProvider, Settings
from streamproc.contracts.topics import load_topics
from streamproc.errors import BrokerError
from streamproc.kafka.admin import admin_client, apply_topics
from streamproc.kafka.broker import EmbeddedBroker, free_port, spawn_child, stop_child, wait_http_ok
from streamproc.sim.scenario import Scenario, build_scenario

READY_TIMEOUT_S = 90.0
TIMEOUT_S = 180.0
LOCAL_TIMEOUT_S = 900.0  # a CPU model answers in tens of seconds a brief
AUDIT_WAITS = 3  # reads of the audit topic before a brief's record is given up on
DEMO_ENV = {  # fast group joins on the embedded broker; short settle delay for a demo
    "STREAMPROC_CASE_SETTLE_S": "2",
    "STREAMPROC_BROKER_REBALANCE_TIMEOUT_S": "3",
    "STREAMPROC_BROKER_SESSION_TIMEOUT_S": "6",
    "STREAMPROC_BROKER_HEARTBEAT_INTERVAL_S": "1",
}


def say(text: str) -> None:
    print(text, flush=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(
    settings: Settings,
    *,
    follow: bool,
    timeout_s: float | None,
    seed: int,
    models: Path | None = None,
) -> int:
    """`models`: brief with the local model server installed there (installed on first
    use); None: the deterministic briefs only."""
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir = Path(settings.data_dir).resolve() / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            model_env: dict[str, str] = {}
            if models is not None:
                model_env = _local_model(stack, models, data_dir)
            elif settings.llm_provider is LLMProvider.NONE:
                say(
                    "deterministic briefs (no model configured); to see a model write them: "
                    "make demo ARGS=--local-model"
                )
            default = LOCAL_TIMEOUT_S if models is not None else TIMEOUT_S
            return _run(settings, data_dir, model_env, follow, timeout_s or default, seed)
    except KeyboardInterrupt:
        say("\ninterrupted; stopping worker and broker")
        return 130


def _local_model(stack: contextlib.ExitStack, models: Path, data_dir: Path) -> dict[str, str]:
    """Install (first use) and start the local model server; the worker's settings for it."""
    from streamproc.llm import local

    if not local.installed(models):
        say(f"⓪ installing the local model server into {models} (first use only) …")
    local.install(models)
    say(f"⓪ starting llama-server with {local.MODEL_DESCRIPTION}")
    server = stack.enter_context(local.serving(models, data_dir / "llama-server.log"))
    say(f"   serving {server.model} at {server.url}; about 30 s a brief on 2 cores")
    return local.settings_env(server)


def _run(
    settings: Settings,
    data_dir: Path,
    model_env: dict[str, str],
    follow: bool,
    timeout_s: float,
    seed: int,
) -> int:
    broker = EmbeddedBroker(log_path=data_dir / "broker.log")
    worker = None
    try:
        broker.start()
        say(f"① embedded broker (Tansu) on {broker.bootstrap}")
        env = {**_worker_env(broker.bootstrap, data_dir), **model_env}
        demo_settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        apply_topics(admin_client(demo_settings), load_topics())
        say("② topics applied from topics/topics.yaml")
        log_path = data_dir / "worker.log"
        with log_path.open("wb") as log:
            worker = spawn_child([sys.executable, "-m", "streamproc", "worker"], env=env, log=log)
        port = int(env["STREAMPROC_HTTP_PORT"])
        _wait_ready(worker, port, log_path)
        say(f"③ worker ready; metrics at http://127.0.0.1:{port}/metrics (log: {log_path})")
        scenario = build_scenario(seed=seed, now_ms=int(time.time() * 1000))
        _publish_scenario(demo_settings, scenario)
        return _follow_briefs(
            demo_settings,
            scenario,
            port,
            follow=follow,
            timeout_s=timeout_s,
            audited=bool(model_env),
        )
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip clean-up
        if worker is not None:
            stop_child(worker, 15.0)
        broker.stop()


def _worker_env(bootstrap: str, data_dir: Path) -> dict[str, str]:
    env = {**os.environ, **{k: v for k, v in DEMO_ENV.items() if k not in os.environ}}
    env["STREAMPROC_KAFKA_BOOTSTRAP"] = bootstrap
    env.setdefault("STREAMPROC_HTTP_PORT", str(free_port()))
    env["STREAMPROC_DATA_DIR"] = str(data_dir / "worker-state")
    return env


def _wait_ready(worker: Any, port: int, log_path: Path) -> None:
    if wait_http_ok(f"http://127.0.0.1:{port}/readyz", worker, READY_TIMEOUT_S, poll_s=0.3):
        return
    if worker.poll() is not None:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise BrokerError(f"worker exited with {worker.returncode}; last log lines:\n{tail}")
    raise BrokerError(f"worker not ready within {READY_TIMEOUT_S:.0f}s; see {log_path}")


def _publish_scenario(settings: Settings, sc: Scenario) -> None:
    t = settings.topics
    codec = make_codec(settings)
    publish_events(settings, t.transactions, sc.transactions, codec)
    publish_events(settings, t.device_signals, sc.signals, codec)
    produce_raw(settings, t.transactions, b"acct-noise-00", b"\x00garbage, not Avro")
    publish_events(settings, t.alerts, sc.alerts, codec)
    say(
        f"④ published {len(sc.transactions)} transactions, {len(sc.signals)} device signals, "
        f"{len(sc.alerts)} alerts and 1 poison record; waiting for briefs…\n"
    )


def _follow_briefs(
    settings: Settings,
    sc: Scenario,
    port: int,
    *,
    follow: bool,
    timeout_s: float,
    audited: bool = False,
) -> int:
    wanted = {e.case_id: e.versions for e in sc.expected}
    seen: dict[str, int] = {}
    latest: dict[str, dict[str, Any]] = {}
    follow_up_sent = decided = False
    deadline = None if follow else timeout_s
    for brief in read_records(
        settings, settings.topics.briefs, timeout_s=deadline if deadline is not None else 10**9
    ):
        say(render_brief(brief) + ("\n" + _guardrails(settings, brief) if audited else "") + "\n")
        seen[brief["case_id"]] = max(seen.get(brief["case_id"], 0), brief["brief_version"])
        latest[brief["case_id"]] = brief
        if not follow_up_sent and all(c in seen for c in wanted):
            _publish_follow_up(settings, sc)
            follow_up_sent = True
        if all(seen.get(c, 0) >= v for c, v in wanted.items()):
            if not decided:
                _analyst_round(settings, latest, port)
                decided = True
            if not follow:
                break
    missing = {c: v for c, v in wanted.items() if seen.get(c, 0) < v}
    _summary(port, seen)
    if missing:
        say(f"✗ not briefed in {timeout_s:.0f}s: {missing}")
        return 1
    say(f"✓ every scenario case briefed ({len(wanted)} cases, {sum(seen.values())} briefs)")
    return 0


def _guardrails(settings: Settings, brief: dict[str, Any]) -> str:
    """What the guardrails changed in the model's draft of this brief, from the audit
    record the worker publishes with it (fraud.llm-audit.v1)."""
    if brief["generation"]["method"] != "LLM":
        return f"   model: not used ({brief['generation'].get('fallback_reason')})"
    for _ in range(AUDIT_WAITS):
        for record in read_records(settings, settings.topics.audit, timeout_s=2.0):
            audit = record.get("value") or {}
            if (audit.get("brief_id"), audit.get("brief_version")) != (
                brief["brief_id"],
                brief["brief_version"],
            ):
                continue
            changed = audit.get("guardrail_violations") or {}
            shown = ", ".join(f"{k} ×{v}" for k, v in sorted(changed.items()))
            return (
                f"   model {audit.get('model')}: {audit.get('latency_ms')} ms, "
                f"{audit.get('prompt_tokens')}+{audit.get('completion_tokens')} tokens; "
                f"guardrails changed: {shown or 'nothing'}"
            )
    return "   guardrails: audit record not found"


def _publish_follow_up(settings: Settings, sc: Scenario) -> None:
    t = settings.topics
    publish_events(settings, t.transactions, sc.follow_up.get("transactions", []))
    publish_events(settings, t.alerts, sc.follow_up.get("alerts", []))
    say("⑤ a second alert arrived on case-ato-001 after its brief → expect brief_version 2\n")


# (case, disposition, usefulness): the scripted analyst's decisions on the demo's briefs
DECISIONS = (("case-ato-001", "CONFIRMED_FRAUD", 5), ("case-benign-001", "FALSE_POSITIVE", 4))


def _analyst_round(settings: Settings, latest: dict[str, dict[str, Any]], port: int) -> None:
    """One round of analysts' feedback (scripted), and what it does to the metrics."""
    decisions = [
        {
            "event_id": f"demo-feedback-{case_id}",
            "brief_id": latest[case_id]["brief_id"],
            "brief_version": latest[case_id]["brief_version"],
            "case_id": case_id,
            "account_id": latest[case_id]["account_id"],
            "decided_at": int(time.time() * 1000),
            "analyst_id": "analyst-demo",
            "disposition": disposition,
            "usefulness": usefulness,
        }
        for case_id, disposition, usefulness in DECISIONS
        if case_id in latest
    ]
    publish_events(settings, settings.topics.feedback, decisions)
    said = ", ".join(
        f"{d['case_id']} {d['disposition']} (usefulness {d['usefulness']})" for d in decisions
    )
    say(f"⑥ an analyst decided (scripted): {said}")
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline and _metric(port, "streamproc_feedback_received_total") < len(
        decisions
    ):
        time.sleep(0.2)


def _metric(port: int, name: str) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _summary(port: int, seen: dict[str, int]) -> None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return
    wanted = (
        "streamproc_briefs_published_total",
        "streamproc_events_rejected_total",
        "streamproc_cases_opened_total",
        "streamproc_brief_latency_seconds_count",
        "streamproc_feedback_received_total",
        "streamproc_feedback_usefulness_sum",
        "streamproc_feedback_agreement_total",
    )
    say(f"metrics (http://127.0.0.1:{port}/metrics):")
    for line in text.splitlines():
        if line.startswith(wanted):
            say(f"   {line}")
