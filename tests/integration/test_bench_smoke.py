"""`make bench` as a short smoke run, so it cannot silently stop working again (it once
did: a log-level value the settings had started to refuse). Small input, no peer, and
no timing assertion: figures from 3,000 events mean nothing. What must hold: every
stage ran and measured something, every alert of the latency stage got its brief, and
the report was written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_make_bench_runs_every_stage_and_writes_its_report(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["smoke"] is True and r["input"] == {"events": 20_000, "accounts": 2_000}
    assert r["ceiling"]["events_per_s"] > 0
    assert r["engine"]["events"] == 20_000 and r["engine"]["events_per_s"] > 0
    assert 0 < r["engine"]["state_windows"] <= 2_000  # per-account windows were kept
    assert r["engine"]["rss_mib"] > 0
    lat = r["latency"]
    assert lat["alerts"] > 0 and lat["briefed"] == lat["alerts"]
    assert [t["concurrency"] for t in r["llm"]["throughput"]] == [1, 8]
    assert all(t["briefs_per_s"] > 0 for t in r["llm"]["throughput"])
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# streamproc benchmark (SMOKE RUN")
    assert "case engine ingest, durable state" in report and "alert→brief" in report
