"""`streamproc demo`: embedded broker, topics, a worker, the synthetic scenario, briefs printed.

Exits 0 once every case of the scenario is briefed (with its expected number of
versions); `--follow` keeps printing briefs until Ctrl-C. Children die with us.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from streamproc.brief.render import render_brief
from streamproc.cli.kafkaio import make_codec, produce_raw, publish_events, read_records
from streamproc.config import Settings
from streamproc.contracts.topics import load_topics
from streamproc.errors import BrokerError
from streamproc.kafka.admin import admin_client, apply_topics
from streamproc.kafka.broker import EmbeddedBroker, free_port, spawn_child, stop_child, wait_http_ok
from streamproc.sim.scenario import Scenario, build_scenario

READY_TIMEOUT_S = 90.0
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


def run_demo(settings: Settings, *, follow: bool, timeout_s: float, seed: int) -> int:
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir = Path(settings.data_dir).resolve() / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=data_dir / "broker.log")
    worker = None
    try:
        broker.start()
        say(f"① embedded broker (Tansu) on {broker.bootstrap}")
        env = _worker_env(broker.bootstrap, data_dir)
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
        return _follow_briefs(demo_settings, scenario, port, follow=follow, timeout_s=timeout_s)
    except KeyboardInterrupt:
        say("\ninterrupted; stopping worker and broker")
        return 130
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
    settings: Settings, sc: Scenario, port: int, *, follow: bool, timeout_s: float
) -> int:
    wanted = {e.case_id: e.versions for e in sc.expected}
    seen: dict[str, int] = {}
    follow_up_sent = False
    deadline = None if follow else timeout_s
    for brief in read_records(
        settings, settings.topics.briefs, timeout_s=deadline if deadline is not None else 10**9
    ):
        say(render_brief(brief) + "\n")
        seen[brief["case_id"]] = max(seen.get(brief["case_id"], 0), brief["brief_version"])
        if not follow_up_sent and all(c in seen for c in wanted):
            _publish_follow_up(settings, sc)
            follow_up_sent = True
        if not follow and all(seen.get(c, 0) >= v for c, v in wanted.items()):
            break
    missing = {c: v for c, v in wanted.items() if seen.get(c, 0) < v}
    _summary(port, seen)
    if missing:
        say(f"✗ not briefed in {timeout_s:.0f}s: {missing}")
        return 1
    say(f"✓ every scenario case briefed ({len(wanted)} cases, {sum(seen.values())} briefs)")
    return 0


def _publish_follow_up(settings: Settings, sc: Scenario) -> None:
    t = settings.topics
    publish_events(settings, t.transactions, sc.follow_up.get("transactions", []))
    publish_events(settings, t.alerts, sc.follow_up.get("alerts", []))
    say("⑤ a second alert arrived on case-ato-001 after its brief → expect brief_version 2\n")


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
    )
    say(f"metrics (http://127.0.0.1:{port}/metrics):")
    for line in text.splitlines():
        if line.startswith(wanted):
            say(f"   {line}")
