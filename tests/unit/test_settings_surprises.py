"""Settings cannot surprise their operator: a variant pointed elsewhere never carries the
primary's API key, only STREAMPROC_* variables configure the worker, and settings are the
ground floor (nothing they import imports them back)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from streamproc.config import Settings, Topics, Variant

PACKAGE = Path(__file__).resolve().parents[2] / "streamproc"


def _primary(tmp_path: Path, **more: object) -> Settings:
    return Settings(
        llm_provider="openai",
        llm_model="gpt-4o-mini",
        llm_api_key="sk-primary-secret",
        **more,  # type: ignore[arg-type]
    )


def test_a_variant_at_another_base_url_without_a_key_gets_none(tmp_path: Path) -> None:
    settings = _primary(tmp_path)
    local = settings.for_variant(Variant(base_url="http://127.0.0.1:8080/v1", model="smol"))
    assert local.llm_api_key_value() is None
    assert settings.variant_api_key(Variant(base_url="http://127.0.0.1:8080/v1")) == "none"


def test_a_variant_at_another_base_url_never_reads_the_primarys_key_file(
    tmp_path: Path,
) -> None:
    key = tmp_path / "primary-key"
    key.write_text("sk-primary-from-file")
    settings = Settings(llm_provider="openai", llm_model="m", llm_api_key_file=key)
    other = settings.for_variant(Variant(base_url="https://llm.elsewhere.example/v1"))
    assert other.llm_api_key_value() is None
    assert other.llm_api_key_file is None


def test_a_variant_of_another_provider_without_a_key_gets_none(tmp_path: Path) -> None:
    settings = _primary(tmp_path)
    variant = Variant(provider="anthropic", model="claude-haiku-4-5")
    assert settings.for_variant(variant).llm_api_key_value() is None
    assert settings.variant_api_key(variant) == "none"


def test_a_variant_at_the_same_endpoint_shares_the_primarys_key(tmp_path: Path) -> None:
    settings = _primary(tmp_path, llm_base_url="https://api.openai.com/v1/")
    for variant in (
        Variant(prompt_version="brief-v2"),
        Variant(model="gpt-4.1-mini"),
        Variant(base_url="https://api.openai.com/v1"),  # named, but the same endpoint
    ):
        assert settings.for_variant(variant).llm_api_key_value() == "sk-primary-secret"
        assert settings.variant_api_key(variant) == "primary"


def test_a_variant_with_its_own_key_file_uses_it(tmp_path: Path) -> None:
    key = tmp_path / "shadow-key"
    key.write_text("sk-shadow\n")
    settings = _primary(tmp_path)
    variant = Variant(base_url="https://other.example/v1", api_key_file=key)
    assert settings.for_variant(variant).llm_api_key_value() == "sk-shadow"
    assert settings.variant_api_key(variant) == "own"


def test_only_streamproc_variables_name_the_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in Topics.model_fields:
        monkeypatch.setenv(field.upper(), f"oops-{field}")
        monkeypatch.setenv(field.lower(), f"oops-{field}")
    assert Settings().topics == Topics() == Topics.model_construct()
    assert Settings().topics.audit == "fraud.llm-audit.v1"
    monkeypatch.setenv("STREAMPROC_TOPICS", '{"audit": "bank.llm-audit"}')
    assert Settings().topics.audit == "bank.llm-audit"


def test_no_settings_class_reads_the_environment_without_the_prefix() -> None:
    """Every pydantic-settings class in the package is Settings itself (prefixed); the
    nested models are plain models, read only through it."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if "BaseSettings" in bases:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert found == ["config.py:Settings"]
    assert Settings.model_config.get("env_prefix") == "STREAMPROC_"


def _imports(module: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_settings_are_the_ground_floor() -> None:
    """config.py imports nothing of streamproc but its errors; security reads settings."""
    ours = {m for m in _imports(PACKAGE / "config.py") if m.startswith("streamproc")}
    assert ours <= {"streamproc.errors"}, ours
    assert "streamproc.config" in _imports(PACKAGE / "kafka" / "security.py")
