"""A stand-in model that lies fluently: one plausible answer for every case, end to end.

The worker briefs the built-in scenario with a model that writes the same summary and
facts whatever the case. The oracle reads the scenario's own events per account (not the
worker's case assembly): no published summary or model fact names a kind of event, an
amount, a device claim or a country that the account's events do not show."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streamproc.cli.kafkaio import publish_events
from streamproc.config import Settings
from streamproc.kafka.broker import stop_child
from streamproc.sim.scenario import build_scenario
from tests.integration.conftest import start_worker, tail_json
from tests.llm_stub import StubInThread

pytestmark = pytest.mark.integration

SUMMARY = (
    "Cluster of card-not-present attempts followed by a high-value transfer of 4,250.00 EUR "
    "from a newly seen device in Brazil."
)
FACTS = [
    "Observed pattern consistent with the alert.",
    "A transfer of 4,250.00 EUR to a new payee from Brazil.",
]
LIE: dict[str, Any] = {
    "risk_level": "CRITICAL",
    "risk_score": 100,
    "reason_codes": [],
    "summary": SUMMARY,
    "key_facts": [{"text": t, "evidence_event_ids": ["E1"], "reason_codes": []} for t in FACTS],
    "recommended_actions": ["REVIEW_TRANSACTIONS"],
    "confidence": "HIGH",
}


def test_a_model_that_writes_one_answer_for_every_case_publishes_none_of_its_lies(
    env: dict[str, str], settings: Settings, topics: None, tmp_path: Path
) -> None:
    sc = build_scenario(seed=11, now_ms=int(time.time() * 1000))
    by_account: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind, events in (("txn", sc.transactions), ("sig", sc.signals)):
        for e in events:
            by_account.setdefault(e["account_id"], {"txn": [], "sig": []})[kind].append(e)
    with StubInThread(answer=LIE) as stub:
        worker = start_worker(
            {
                **env,
                "STREAMPROC_LLM_PROVIDER": "openai",
                "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
                "STREAMPROC_LLM_MODEL": "stub-gpt",
            },
            tmp_path / "worker.log",
        )
        try:
            publish_events(settings, "fraud.transactions.v1", sc.transactions)
            publish_events(settings, "fraud.device-signals.v1", sc.signals)
            publish_events(settings, "fraud.alerts.v1", sc.alerts)
            n_cases = len({a["case_id"] for a in sc.alerts})
            briefs = tail_json(env, "fraud.case-briefs.v1", n_cases, timeout=180)
        finally:
            stop_child(worker.proc, 20)
    assert len(stub.requests) >= n_cases  # the model answered every case
    false_somewhere = 0
    for brief in briefs:
        assert brief["generation"]["method"] == "LLM"
        own = by_account.get(brief["account_id"], {"txn": [], "sig": []})
        txns, sigs = own["txn"], own["sig"]
        shown = {
            "card-not-present": any(t["channel"] == "CARD_NOT_PRESENT" for t in txns),
            "transfer": any(t["channel"] == "TRANSFER" for t in txns),
            "newly seen device": any(s["signal_type"] == "NEW_DEVICE" for s in sigs),
            "new payee": any(s["signal_type"] == "PAYEE_ADDED" for s in sigs),
            "4,250.00 EUR": any(
                t["amount_minor"] == 425_000 and t["currency"] == "EUR" for t in txns
            ),
            "brazil": any(
                (r.get("merchant_country") or r.get("geo_country")) == "BR" for r in txns + sigs
            ),
        }
        texts = [brief["summary"], *(f["text"] for f in brief["key_facts"])]
        published = " ".join(texts).lower()
        for claim, true in shown.items():
            if not true:
                assert claim.lower() not in published, (brief["case_id"], claim, texts)
        if not all(shown.values()):
            false_somewhere += 1
        assert FACTS[0] not in texts  # states nothing: not published
    assert false_somewhere >= 3  # the lie is false on most cases of the scenario
