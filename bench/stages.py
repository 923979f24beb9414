"""Benchmark stages, each on its own embedded broker; every figure is measured, none assumed."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.workload import SIG_TOPIC, TXN_TOPIC, Encoded, alert, producer
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.contracts.topics import load_topics
from streamproc.kafka.admin import admin_client, apply_topics
from streamproc.kafka.broker import EmbeddedBroker, free_port, spawn_child, stop_child

ROOT = Path(__file__).resolve().parent.parent


def fresh_broker(log: Path) -> EmbeddedBroker:
    broker = EmbeddedBroker(log_path=log).start()
    apply_topics(admin_client(Settings(kafka_bootstrap=broker.bootstrap)), load_topics())
    return broker


def ceiling(bootstrap: str, n: int) -> dict[str, Any]:
    """A plain confluent-kafka consumer decoding every record with the same codec."""
    codec = AvroCodec(SchemaSet())
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench-ceiling",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52428800,
        }
    )
    parts = []
    for topic in (TXN_TOPIC, SIG_TOPIC):
        md = c.list_topics(topic, timeout=10).topics[topic]
        parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions]
    c.assign(parts)
    seen, t0 = 0, None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        for msg in c.consume(10_000, 0.5):
            if msg.error():
                continue
            t0 = t0 or time.monotonic()
            codec.decode(msg.topic(), msg.value())
            seen += 1
    elapsed = time.monotonic() - (t0 or time.monotonic())
    c.close()
    return {"events": seen, "seconds": round(elapsed, 2), "events_per_s": round(seen / elapsed)}


def worker_env(bootstrap: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(
        {
            "STREAMPROC_KAFKA_BOOTSTRAP": bootstrap,
            "STREAMPROC_HTTP_PORT": str(free_port()),
            "STREAMPROC_BROKER_REBALANCE_TIMEOUT_S": "2",
            "STREAMPROC_BROKER_SESSION_TIMEOUT_S": "10",
            "STREAMPROC_BROKER_HEARTBEAT_INTERVAL_S": "1",
            "STREAMPROC_DATA_DIR": str(data_dir),
            "STREAMPROC_LOG_LEVEL": "warning",
            **extra,
        }
    )
    return env


INPUTS = ("fraud.transactions.v1", "fraud.device-signals.v1", "fraud.alerts.v1")
WARM_UP_S = 2.0  # of the latency stream, not measured (`latency`)
LINKS_KEY = "bench-entity-index-key-0123456789"  # STREAMPROC_ENTITY_KEY: links on


def metric(port: int, name: str, topics: tuple[str, ...] | None = None) -> float:
    """A metric's total; `topics`: only its samples of those topics (events consumed
    counts the entity index's own records too, which are no input events)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and (topics is None or s.labels.get("topic") in topics)
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return spawn_child([sys.executable, "-m", "streamproc", "worker"], env=env, log=fh)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = spawn_worker(env, log)
    port = int(env["STREAMPROC_HTTP_PORT"])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker died: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("worker not ready")


def engine_ingest(
    bootstrap: str, n: int, work: Path, name: str = "state", **env_extra: str
) -> dict[str, Any]:
    """The worker on input produced beforehand: events/s from first to last event, and RSS."""
    env = worker_env(bootstrap, work / name, **env_extra)
    port = int(env["STREAMPROC_HTTP_PORT"])
    # Watched from its start, not from when it says it is ready: by then a small input
    # may be consumed already.
    proc = spawn_worker(env, work / "worker-ingest.log")
    try:
        t0 = None
        deadline = time.monotonic() + 600
        done = 0.0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker died: {(work / 'worker-ingest.log').read_text()[-2000:]}"
                )
            try:
                done = metric(port, "streamproc_events_consumed_total", INPUTS)
            except httpx.HTTPError:  # not listening yet
                time.sleep(0.02)
                continue
            if done and t0 is None:
                t0, first = time.monotonic(), done
            if done >= n:
                break
            time.sleep(0.02)  # a smoke run is over in well under a second
        elapsed = time.monotonic() - (t0 or time.monotonic())
        rate = (done - first) / elapsed if t0 and elapsed > 0 else 0.0
        time.sleep(1.0)
        return {
            "events": int(done),
            "seconds": round(elapsed, 2),
            "events_per_s": round(rate),
            "rss_mib": rss_mib(proc.pid),
            "state_windows": metric(port, "streamproc_state_entries"),
            "links_messages": metric(port, "streamproc_links_messages_total"),
        }
    finally:
        stop_child(proc, 30)


def latency(
    bootstrap: str, rate: float, seconds: float, work: Path, accounts: int, **env_extra: str
) -> dict[str, Any]:
    """Alert-to-brief latency at `rate` events/s (settle delay 0), from Kafka timestamps."""
    from bench.workload import events

    env = worker_env(
        bootstrap, work / f"state-lat{len(env_extra)}", STREAMPROC_CASE_SETTLE_S="0", **env_extra
    )
    proc = start_worker(env, work / "worker-latency.log")
    try:
        total = int(rate * (seconds + WARM_UP_S))
        stream = list(events(total, accounts, seed=2))
        p = producer(bootstrap)
        sent_at: dict[str, int] = {}
        t_start = time.monotonic()
        # The first WARM_UP_S of the stream (alerts included) is not measured: a worker
        # just started lags its input by up to 200 ms (400 ms with linked accounts, whose
        # first asks and answers are its first reads and writes of those topics) for
        # about half a second, whatever the rate. Both rows skip the same share.
        warm, warm_alerts = int(rate * WARM_UP_S), 0
        for i, rec in enumerate(stream):
            p.produce(rec.topic, key=rec.key, value=rec.value)
            if i % 200 == 199:  # an alert every 200 events, naming nothing missing
                now_ms = int(time.time() * 1000)
                a: Encoded = alert(i, rec.key.decode(), [], now_ms - 1000)
                p.produce(a.topic, key=a.key, value=a.value, timestamp=now_ms)
                if i >= warm:
                    sent_at[f"case-{i}"] = now_ms
                else:
                    warm_alerts += 1
            ahead = (i + 1) / rate - (time.monotonic() - t_start)
            if ahead > 0.002:
                time.sleep(ahead)
            p.poll(0)
        p.flush(30)
        achieved = total / (time.monotonic() - t_start)
        briefs = _brief_timestamps(bootstrap, len(sent_at) + warm_alerts, 60.0)
        port = int(env["STREAMPROC_HTTP_PORT"])
        waits = metric(port, "streamproc_links_wait_seconds_sum")
        waited = metric(port, "streamproc_links_wait_seconds_count")
        lat = sorted(briefs[c] - sent_at[c] for c in sent_at if c in briefs)
        return {
            "target_rate": round(rate),
            "achieved_rate": round(achieved),
            "alerts": len(sent_at),
            "briefed": len(lat),
            **_percentiles(lat),
            "links_wait_mean_ms": round(1000 * waits / waited, 1) if waited else None,
        }
    finally:
        stop_child(proc, 30)


def _percentiles(ms: list[int]) -> dict[str, float]:
    if not ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": ms[-1]}


def _brief_timestamps(bootstrap: str, expected: int, timeout_s: float) -> dict[str, int]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench-briefs", "enable.auto.commit": False}
    )
    md = c.list_topics("fraud.case-briefs.v1", timeout=10).topics["fraud.case-briefs.v1"]
    c.assign([TopicPartition("fraud.case-briefs.v1", p, OFFSET_BEGINNING) for p in md.partitions])
    out: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        for msg in c.consume(1000, 0.5):
            if not msg.error():
                out.setdefault(msg.key().decode(), msg.timestamp()[1])
    c.close()
    return out


def peer_quix(bootstrap: str, n: int, work: Path) -> dict[str, Any]:
    """Quix Streams, RocksDB state with a changelog, in its own venv (it pins confluent-kafka)."""
    venv = ROOT / ".venv-bench-peer"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "quixstreams==3.28.1", "fastavro"], check=True
        )
    out = subprocess.run(
        [
            str(py),
            str(ROOT / "bench" / "peer_quix.py"),
            bootstrap,
            str(n),
            str(work / "quix-state"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr[-1500:]}
    import json

    return dict(json.loads(out.stdout.strip().splitlines()[-1]))
