"""What SREs rely on: TLS to Kafka, graceful SIGTERM, JSON logs with correlation ids."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import trustme

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import EmbeddedBroker, free_port, stop_child
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import WorkerHandle, cli, published_briefs, start_worker, tail_json
from tests.llm_stub import StubInThread
from tests.proxy import Proxy

pytestmark = pytest.mark.integration
ACCOUNTS = ("acct-ct-001", "acct-ato-001", "acct-benign-001")
PII = ["Anna Schmidt", "anna.schmidt@example.com", "4111111111111111", "198.51.100.23"]


def _cases(seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    sc = build_scenario(seed=seed, now_ms=int(time.time() * 1000))
    pick = lambda evs: [e for e in evs if e["account_id"] in ACCOUNTS]  # noqa: E731
    return pick(sc.transactions), pick(sc.signals), pick(sc.alerts)


def _publish(settings: Settings, seed: int) -> int:
    txns, sigs, alerts = _cases(seed)
    publish_events(settings, "fraud.transactions.v1", txns)
    publish_events(settings, "fraud.device-signals.v1", sigs)
    publish_events(settings, "fraud.alerts.v1", alerts)
    return len({a["case_id"] for a in alerts})


def _wait_metric(worker: WorkerHandle, name: str, value: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.metric(name) >= value:
            return
        time.sleep(0.2)
    pytest.fail(f"{name} did not reach {value}:\n{worker.log.read_text()[-3000:]}")


def _json_logs(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{n} is not a JSON log line: {line[:200]}")
    return records


def test_worker_and_cli_speak_mutual_tls_to_kafka(tmp_path: Path) -> None:
    """Every client (admin, producer, changelog writer, faust consumer, tail) handshakes
    TLS with a client certificate, from STREAMPROC_KAFKA_SSL_* settings alone."""
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("streamproc-worker@example.internal")
    ca_file, cert_file, key_file = (
        tmp_path / "ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
    )
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert.cert_chain_pems[0].write_to_path(str(cert_file))
    client_cert.private_key_pem.write_to_path(str(key_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no connection

    tls_port = free_port()
    broker = EmbeddedBroker(log_path=tmp_path / "broker.log", advertised=f"127.0.0.1:{tls_port}")
    with broker.running(), Proxy(("127.0.0.1", broker.port), tls_port, server_ctx) as proxy:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")},
            "STREAMPROC_KAFKA_BOOTSTRAP": f"127.0.0.1:{tls_port}",
            "STREAMPROC_KAFKA_SECURITY_PROTOCOL": "SSL",
            "STREAMPROC_KAFKA_SSL_CA_FILE": str(ca_file),
            "STREAMPROC_KAFKA_SSL_CERT_FILE": str(cert_file),
            "STREAMPROC_KAFKA_SSL_KEY_FILE": str(key_file),
            "STREAMPROC_HTTP_PORT": str(free_port()),
            "STREAMPROC_CASE_SETTLE_S": "1",
            "STREAMPROC_BROKER_REBALANCE_TIMEOUT_S": "2",
            "STREAMPROC_BROKER_SESSION_TIMEOUT_S": "6",
            "STREAMPROC_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
            "STREAMPROC_DATA_DIR": str(tmp_path / "state"),
        }
        applied = cli(env, "topics", "apply")
        assert applied.returncode == 0, applied.stderr
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            settings = Settings(
                kafka_bootstrap=env["STREAMPROC_KAFKA_BOOTSTRAP"],
                kafka_security_protocol="SSL",
                kafka_ssl_ca_file=ca_file,
                kafka_ssl_cert_file=cert_file,
                kafka_ssl_key_file=key_file,
            )
            n_cases = _publish(settings, seed=5)
            briefs = tail_json(env, "fraud.case-briefs.v1", n_cases)
            assert {b["case_id"] for b in briefs} == {
                "case-ct-001",
                "case-ato-001",
                "case-benign-001",
            }
        finally:
            assert stop_child(worker.proc, 30.0) == 0
        assert proxy.connections >= 3  # each one a completed TLS handshake
        assert proxy.peer_subjects, "no client certificate was presented"
        banner = [r for r in _json_logs(worker.log) if "co-partitioned" in r["msg"]]
        assert "SSL" in banner[0]["msg"] and "client certificate" in banner[0]["msg"]

        # The same settings without the client certificate are refused by the broker side.
        no_cert = {**env}
        del no_cert["STREAMPROC_KAFKA_SSL_CERT_FILE"], no_cert["STREAMPROC_KAFKA_SSL_KEY_FILE"]
        refused = cli(no_cert, "tail", "fraud.case-briefs.v1", "--max", "1", "--timeout", "5")
        assert refused.returncode != 0


def test_sigterm_hands_back_in_flight_cases_and_logs_correlation_ids(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    """SIGTERM while the model hangs on every case: the worker exits 0 well within a pod's
    30 s grace, the cases stay pending, and the next worker briefs each exactly once."""
    with StubInThread() as stub:
        stub.default = "hang"
        llm_env = {
            **env,
            "STREAMPROC_LLM_PROVIDER": "openai",
            "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
            "STREAMPROC_LLM_MODEL": "stub-gpt",
            "STREAMPROC_LLM_API_KEY": "sk-test-secret-never-logged",
            "STREAMPROC_LLM_TIMEOUT_S": "60",
            "STREAMPROC_SHUTDOWN_GRACE_S": "2",
        }
        first = start_worker(llm_env, tmp_path / "worker1.log")
        n_cases = _publish(settings, seed=5)
        _wait_metric(first, "streamproc_llm_in_flight", n_cases)
        first.proc.send_signal(signal.SIGTERM)  # no wait for the periodic commit: stop commits
        assert first.proc.wait(30) == 0
        assert not published_briefs(settings)
        logs1 = _json_logs(first.log)
        [shutdown] = [r for r in logs1 if r["msg"].startswith("shutdown:")]
        assert shutdown["handed_back"] == n_cases and shutdown["finished"] == 0

        stub.default = "ok"
        second = start_worker(llm_env, tmp_path / "worker2.log")
        try:
            briefs = tail_json(env, "fraud.case-briefs.v1", n_cases, timeout=60)
            assert sorted(b["case_id"] for b in briefs) == sorted(
                {"case-ct-001", "case-ato-001", "case-benign-001"}
            )
            assert {b["generation"]["method"] for b in briefs} == {"LLM"}
            _wait_metric(second, "streamproc_briefs_published_total", n_cases)
            time.sleep(2.0)  # a duplicate would follow right after
            everything = published_briefs(settings)
            assert len(everything) == n_cases, "a case was briefed twice"
            # The first worker committed on its way out: nothing was consumed twice.
            assert second.metric("streamproc_events_consumed_total") == 0
        finally:
            assert stop_child(second.proc, 30.0) == 0

    logs2 = _json_logs(second.log)
    published = [r for r in logs2 if r["msg"] == "brief published"]
    by_case = {r["case_id"]: r for r in published}
    assert set(by_case) == {b["case_id"] for b in briefs}
    for brief in briefs:
        assert by_case[brief["case_id"]]["brief_id"] == brief["brief_id"]
        assert by_case[brief["case_id"]]["method"] == "LLM"
    text = first.log.read_text() + second.log.read_text()
    assert "sk-test-secret-never-logged" not in text
    for pii in PII:
        assert pii not in text


def test_sigterm_lets_in_flight_model_calls_finish_within_the_grace(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    """A slow (not hung) model: the calls in flight at SIGTERM complete and their briefs
    are published before the worker exits; nothing is left for the next owner."""
    with StubInThread(delay_s=3.0) as stub:
        worker = start_worker(
            {
                **env,
                "STREAMPROC_LLM_PROVIDER": "openai",
                "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
                "STREAMPROC_LLM_MODEL": "stub-gpt",
                "STREAMPROC_LLM_TIMEOUT_S": "30",
                "STREAMPROC_SHUTDOWN_GRACE_S": "20",
            },
            tmp_path / "worker.log",
        )
        n_cases = _publish(settings, seed=5)
        _wait_metric(worker, "streamproc_llm_in_flight", n_cases)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0
    [shutdown] = [r for r in _json_logs(worker.log) if r["msg"].startswith("shutdown:")]
    assert (shutdown["finished"], shutdown["handed_back"]) == (n_cases, 0)
    briefs = published_briefs(settings)
    assert len(briefs) == n_cases
    assert {b["generation"]["method"] for b in briefs} == {"LLM"}
