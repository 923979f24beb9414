"""The worker refuses incomplete LLM settings before it touches the network."""

from __future__ import annotations

import os
import subprocess
import sys


def test_provider_without_model_is_refused_with_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(
        {
            "STREAMPROC_LLM_PROVIDER": "anthropic",
            "STREAMPROC_LLM_API_KEY": "sk-secret",
            "STREAMPROC_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "streamproc", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "STREAMPROC_LLM_PROVIDER=anthropic needs STREAMPROC_LLM_MODEL" in result.stderr
    assert "sk-secret" not in result.stderr + result.stdout
    assert "Kafka" not in result.stderr  # it failed on settings, before any connection
