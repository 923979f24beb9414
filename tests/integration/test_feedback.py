"""Analysts' feedback end to end: briefs published by a real worker on the embedded
broker, decisions published on fraud.brief-feedback.v1 with the real `streamproc
publish`, and the worker's metrics counting them against each brief's provenance.

The expected figures come from the briefs as read back from their topic and the
decisions this test wrote, not from the worker's code."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from streamproc.cli.kafkaio import produce_raw
from streamproc.config import Settings
from tests.integration.conftest import WorkerHandle, cli, tail_json, write_jsonl
from tests.integration.test_operations import PII, _publish, _wait_metric

FEEDBACK = "fraud.brief-feedback.v1"
PROVENANCE = {"method": "FALLBACK", "model": "none", "prompt_version": "none", "variant": "primary"}


def _decision(brief: dict[str, Any], i: int, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": f"fb-{i}",
        "brief_id": brief["brief_id"],
        "brief_version": brief["brief_version"],
        "case_id": brief["case_id"],
        "account_id": brief["account_id"],
        "decided_at": int(time.time() * 1000),
        "analyst_id": f"analyst-{i:03d}",
        **fields,
    }


def test_feedback_published_by_the_cli_reaches_the_metrics_and_bad_feedback_the_dlq(
    env: dict[str, str], settings: Settings, worker: WorkerHandle, tmp_path: Path
) -> None:
    n = _publish(settings, seed=5)
    briefs = {b["case_id"]: b for b in tail_json(env, "fraud.case-briefs.v1", n)}
    high = [b for b in briefs.values() if b["risk_level"] in ("HIGH", "CRITICAL")]
    low = [b for b in briefs.values() if b["risk_level"] == "LOW"]
    assert high and low, {c: b["risk_level"] for c, b in briefs.items()}

    decisions = [
        _decision(high[0], 1, disposition="FALSE_POSITIVE", usefulness=2),
        _decision(low[0], 2, disposition="FALSE_POSITIVE", usefulness=5, comment="ok, Anna"),
        _decision(
            {**high[0], "brief_id": "00000000-0000-5000-8000-00000000dead"},  # never published
            3,
            disposition="CONFIRMED_FRAUD",
        ),
    ]
    result = cli(env, "publish", FEEDBACK, str(write_jsonl(tmp_path / "fb.jsonl", decisions)))
    assert result.returncode == 0, result.stderr

    _wait_metric(worker, "streamproc_feedback_received_total", 3)
    assert worker.metric("streamproc_feedback_received_total", **PROVENANCE) == 2
    assert worker.metric("streamproc_feedback_received_total", method="unknown") == 1
    assert worker.metric("streamproc_feedback_usefulness_sum", **PROVENANCE) == 7
    assert worker.metric("streamproc_feedback_usefulness_count", **PROVENANCE) == 2
    # a HIGH/CRITICAL brief decided FALSE_POSITIVE disagrees; a LOW one agrees
    assert worker.metric("streamproc_feedback_agreement_total", agrees="false") == 1
    assert worker.metric("streamproc_feedback_agreement_total", agrees="true") == 1
    assert (
        worker.metric(
            "streamproc_feedback_dispositions_total",
            risk_level=high[0]["risk_level"],
            disposition="FALSE_POSITIVE",
        )
        == 1
    )

    # `streamproc publish` names the bad line and exits non-zero; the good line still goes
    mixed = [_decision(low[0], 4, disposition="ESCALATED"), _decision(low[0], 5, usefulness=9)]
    mixed[1]["disposition"] = "ESCALATED"
    path = write_jsonl(tmp_path / "mixed.jsonl", mixed)
    refused = cli(env, "publish", FEEDBACK, str(path))
    assert refused.returncode != 0
    assert f"{path}:2: usefulness must be between 1 and 5" in refused.stderr
    _wait_metric(worker, "streamproc_feedback_received_total", 4)

    # bytes that are not a feedback record: dead-lettered with the reason, the worker goes on
    produce_raw(settings, FEEDBACK, low[0]["account_id"].encode(), b"not avro at all")
    [dead] = tail_json(env, "fraud.dlq.v1", 1)
    assert dead["headers"]["__connect.errors.topic"] == FEEDBACK
    assert dead["headers"]["streamproc.errors.reason"] == "decode_error"
    _wait_metric(worker, "streamproc_events_rejected_total", 1)
    assert worker.metric("streamproc_feedback_received_total") == 4
    assert worker.proc.poll() is None
    exposition = worker.get("/metrics").text
    for planted in ("Anna", "analyst-001", high[0]["brief_id"], high[0]["case_id"]):
        assert planted not in exposition
    log = worker.log.read_text()
    for planted in ("ok, Anna", "analyst-001", "analyst-002"):  # the decisions' own values
        assert planted not in log

    # the decided cases, exported as labelled rows, redacted; and evaluated
    out = tmp_path / "analysts"
    exported = cli(env, "feedback", "export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    # decided: high[0] and low[0] FALSE_POSITIVE (latest for low[0]: ESCALATED → skipped);
    # the decision on a brief never published is skipped too
    assert [label["case_id"] for label in labels] == [high[0]["case_id"]]
    assert (labels[0]["min_level"], labels[0]["max_level"]) == ("LOW", "MEDIUM")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] == {"disposition ESCALATED": 1, "brief not on its topic": 1}
    written = "".join(p.read_text() for p in out.iterdir())
    for planted in PII:
        assert planted not in written
    assert high[0]["account_id"] in written  # the case's events are there, redacted
    report = tmp_path / "eval"
    evaluation = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamproc.tooling.evaluation",
            f"--set=analysts={out}",
            f"--out={report}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # the analyst found the HIGH/CRITICAL brief a false positive: the gates must say so
    assert evaluation.returncode == 1, evaluation.stdout + evaluation.stderr
    assert "risk_agreement = 0.0, below the minimum" in evaluation.stderr
