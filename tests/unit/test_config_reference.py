"""docs/configuration.md lists every setting, with its default and meaning, and is what
`make docs` generates from Settings today."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from streamproc import config_reference
from streamproc.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _rows() -> dict[str, tuple[str, str]]:
    """key → (default, meaning), read from the committed page's tables."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `(STREAMPROC_[A-Z0-9_]+)` \| (.*?) \| (.*) \|$", line)
        if m:
            rows[m[1]] = (m[2], m[3])
    return rows


def test_the_committed_page_is_what_make_docs_generates() -> None:
    assert DOC.read_text() == config_reference.render(), "run `make docs` and commit"


def test_every_setting_has_one_line_with_a_meaning() -> None:
    rows = _rows()
    keys = {f"STREAMPROC_{name.upper()}" for name in Settings.model_fields}
    assert set(rows) == keys
    assert all(len(meaning) > 10 for _default, meaning in rows.values())


def test_every_secret_has_a_file_form_and_says_so() -> None:
    rows = _rows()
    secrets = [
        name
        for name, info in Settings.model_fields.items()
        if info.annotation in (SecretStr, SecretStr | None)
    ]
    assert sorted(secrets) == [
        "entity_key",
        "kafka_sasl_password",
        "kafka_ssl_key_password",
        "llm_api_key",
    ]
    for name in secrets:
        assert f"{name}_file" in Settings.model_fields
        key = f"STREAMPROC_{name.upper()}"
        assert rows[key][1].startswith(f"*secret*; or `{key}_FILE`")


def test_defaults_on_the_page_are_the_settings_defaults() -> None:
    rows = _rows()
    assert rows["STREAMPROC_KAFKA_BOOTSTRAP"][0] == "`127.0.0.1:9092`"
    assert rows["STREAMPROC_CASE_SETTLE_S"][0] == "5"
    assert rows["STREAMPROC_LLM_PROVIDER"][0] == "`none`"
    assert rows["STREAMPROC_KAFKA_SSL_CHECK_HOSTNAME"][0] == "true"
    assert rows["STREAMPROC_LLM_API_KEY"][0] == "unset"


def test_a_setting_without_a_meaning_is_refused() -> None:
    with pytest.raises(ValueError, match="has no description"):
        config_reference._row("new_knob", FieldInfo(annotation=int, default=3), set())


def test_the_topics_example_on_the_page_works(monkeypatch: pytest.MonkeyPatch) -> None:
    [example] = re.findall(r"`STREAMPROC_TOPICS='(.*?)'`", DOC.read_text())
    monkeypatch.setenv("STREAMPROC_TOPICS", example)
    topics = Settings().topics
    assert topics.briefs == "risk.case-briefs.v1"
    assert topics.alerts == "fraud.alerts.v1"  # the others keep their defaults
