"""A primary and a shadow variant (two prompt versions) on one worker, against a
stand-in OpenAI server: analysts' topic gets the primary's briefs only, the shadow topic
gets the shadow's, and the comparison report puts the two side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from streamproc.config import Settings, Topics
from streamproc.kafka.admin import admin_client, partition_counts
from streamproc.kafka.broker import stop_child
from tests.integration.conftest import tail_json
from tests.integration.test_llm_briefs import llm_worker, publish_cases
from tests.integration.test_llm_briefs import stub as stub  # the stand-in server fixture
from tests.llm_stub import StubInThread, StubLLM

V2_ONLY = "Order the key facts as an analyst checks them"  # a line of prompts/brief-v2.yaml


def test_shadow_variant_fills_its_topic_and_analysts_topic_stays_the_primarys(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    shadow = json.dumps({"prompt_version": "brief-v2", "model": "stub-gpt-next"})
    worker = llm_worker(env, stub, tmp_path, STREAMPROC_LLM_SHADOW=shadow)
    try:
        publish_cases(settings)
        analysts = tail_json(env, "fraud.case-briefs.v1", 3)
        shadows = tail_json(env, "fraud.case-briefs.shadow.v1", 3)
    finally:
        stop_child(worker.proc, 30.0)
    assert sorted(b["case_id"] for b in analysts) == sorted(b["case_id"] for b in shadows)
    for brief in analysts:
        gen = brief["generation"]
        assert (gen["variant"], gen["prompt_version"], gen["model"]) == (
            "primary",
            "brief-v1",
            "stub-gpt",
        )
    for brief in shadows:
        gen = brief["generation"]
        assert (gen["variant"], gen["prompt_version"], gen["model"]) == (
            "shadow",
            "brief-v2",
            "stub-gpt-next",
        )
    asked = {r["body"]["model"]: r["body"]["messages"][0]["content"] for r in stub.requests}
    assert V2_ONLY in asked["stub-gpt-next"] and V2_ONLY not in asked["stub-gpt"]

    # the two variants side by side on the same labelled cases, through the same stand-in
    out = tmp_path / "comparison"
    compare_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")},
        "STREAMPROC_LLM_PROVIDER": "openai",
        "STREAMPROC_LLM_BASE_URL": f"{stub.url}/v1",
        "STREAMPROC_LLM_MODEL": "stub-gpt",
        "STREAMPROC_LLM_API_KEY": "sk-test-secret",
        "STREAMPROC_LLM_SHADOW": shadow,
    }
    command = [sys.executable, "-m", "streamproc.tooling.evaluation.compare", "--variant", "shadow"]
    result = subprocess.run(
        [*command, "--limit", "16", "--out", str(out)],
        env=compare_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads((out / "comparison-shadow.json").read_text())
    assert report["primary"]["prompt_version"] == "brief-v1"
    assert report["shadow"]["prompt_version"] == "brief-v2"
    for split in ("held-out", "development"):
        both = report["splits"][split]
        assert both["primary"]["cases"] == both["shadow"]["cases"] == 16
    assert "| risk_agreement |" in (out / "comparison-shadow.md").read_text()


def test_a_hostile_environment_renames_nothing_and_sends_no_key_astray(
    env: dict[str, str], settings: Settings, topics: None, stub: StubLLM, tmp_path: Path
) -> None:
    """Unrelated variables named like settings change nothing; a shadow pointed at
    another server with no key of its own sends none (and the worker says so)."""
    hostile = {  # what other software in the pod might well set
        **{name.upper(): f"oops-{name}" for name in Topics.model_fields},
        "TOPICS": '{"briefs": "oops-briefs"}',
        "LLM_API_KEY": "sk-unprefixed-leak",
        "API_KEY": "sk-unprefixed-leak",
        "KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "LLM_PROVIDER": "anthropic",
        "HTTP_PORT": "1",
        "APP_ID": "oops-group",
    }
    with StubInThread() as elsewhere:  # a local server: needs no key, gets none
        shadow = json.dumps({"base_url": f"{elsewhere.url}/v1", "model": "local-smol"})
        worker = llm_worker({**env, **hostile}, stub, tmp_path, STREAMPROC_LLM_SHADOW=shadow)
        try:
            publish_cases(settings)
            analysts = tail_json(env, "fraud.case-briefs.v1", 3)
            shadows = tail_json(env, "fraud.case-briefs.shadow.v1", 3)
        finally:
            stop_child(worker.proc, 30.0)
        asked_elsewhere = list(elsewhere.requests)
        sent_elsewhere = elsewhere.sent()
    log = (tmp_path / "worker.log").read_text()
    assert {b["generation"]["variant"] for b in analysts} == {"primary"}
    assert {b["generation"]["model"] for b in shadows} == {"local-smol"}
    assert asked_elsewhere, "the shadow's server was never asked"
    for request in asked_elsewhere:
        assert not {"authorization", "x-api-key", "api-key"} & {
            h.lower() for h in request["headers"]
        }, request["headers"]
    assert b"sk-test-secret" not in sent_elsewhere and b"sk-unprefixed" not in sent_elsewhere
    assert {r["headers"]["Authorization"] for r in stub.requests} == {"Bearer sk-test-secret"}
    assert (
        f"shadow variant: model local-smol at {elsewhere.url}/v1; API key: none (another "
        "endpoint, and no api_key_file of its own)" in log
    ), log[-3000:]
    assert "sk-test-secret" not in log and "oops-" not in log
    existing = partition_counts(admin_client(settings))
    assert not [name for name in existing if name.startswith("oops-")], sorted(existing)
