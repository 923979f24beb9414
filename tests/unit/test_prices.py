"""The cost estimate's prices: settings, a user's price list, the shipped list, and a
clear word at start-up when none knows the model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from streamproc.cli.worker import announce_llm
from streamproc.config import Settings
from streamproc.errors import ConfigError
from streamproc.llm.prices import price_for


def test_shipped_price_of_a_model_and_of_its_dated_ids() -> None:
    # gpt-4o-mini: USD 0.15 per million prompt tokens, 0.60 per million completion tokens
    # (the provider's page); here per thousand.
    for model in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"):
        price = price_for(model)
        assert price is not None
        assert (price.prompt_per_1k, price.completion_per_1k) == pytest.approx((0.00015, 0.0006))
        assert price.origin.startswith("shipped prices (as of ")
    gpt4o = price_for("gpt-4o-2024-08-06")
    assert gpt4o is not None and gpt4o.prompt_per_1k == pytest.approx(0.0025)
    for model in ("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"):
        haiku = price_for(model)
        assert haiku is not None and haiku.completion_per_1k == pytest.approx(0.004)


def test_cost_of_a_call() -> None:
    price = price_for("claude-haiku-4-5")  # USD 1 / 5 per million tokens
    assert price is not None
    assert price.cost(2_000, 500) == pytest.approx(2_000 * 1e-6 + 500 * 5e-6)


def test_unknown_or_lookalike_models_have_no_price() -> None:
    assert price_for("SmolLM2-135M-Instruct-Q4_1") is None
    assert price_for("gpt-4o-minix") is None
    assert price_for("gpt-4o-audio-preview") is None  # another model, not a gpt-4o snapshot
    assert price_for(None) is None


def test_settings_win_and_go_together(tmp_path: Path) -> None:
    price = price_for("gpt-4o-mini", prompt_per_1k=0.0, completion_per_1k=0.0)
    assert price is not None and price.cost(10_000, 10_000) == 0.0  # a free local model
    assert price.origin == "settings"
    with pytest.raises(ConfigError, match="set both"):
        price_for("gpt-4o-mini", prompt_per_1k=0.1)


def test_a_users_price_list_wins_over_the_shipped_one(tmp_path: Path) -> None:
    mine = tmp_path / "prices.yaml"
    mine.write_text(
        "models:\n"
        "  gpt-4o-mini: {prompt_per_1m: 0.10, completion_per_1m: 0.40}\n"
        "  our-private-model: {prompt_per_1m: 1, completion_per_1m: 2}\n"
    )
    ours = price_for("gpt-4o-mini", prices_file=mine)
    assert ours is not None and ours.prompt_per_1k == pytest.approx(0.0001)
    assert ours.origin == str(mine)
    private = price_for("our-private-model", prices_file=mine)
    assert private is not None and private.completion_per_1k == pytest.approx(0.002)
    shipped = price_for("gpt-4.1", prices_file=mine)  # not in mine: the shipped one
    assert shipped is not None and shipped.completion_per_1k == pytest.approx(0.008)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [a, b]\n", "expected a 'models:' mapping"),
        ("models:\n  m: {prompt_per_1m: 1}\n", "needs prompt_per_1m and completion_per_1m"),
        ("models:\n  m: {prompt_per_1m: -1, completion_per_1m: 1}\n", "not negative"),
        ("models: {\n", "is not YAML"),
    ],
)
def test_a_bad_price_list_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "prices.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        price_for("m", prices_file=bad)
    assert str(bad) in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        price_for("m", prices_file=tmp_path / "missing.yaml")


def test_start_up_says_when_cost_cannot_be_estimated(caplog: pytest.LogCaptureFixture) -> None:
    unknown = Settings(
        llm_provider="openai", llm_model="SmolLM2-135M-Instruct-Q4_1", llm_api_key="k"
    )
    with caplog.at_level(logging.INFO):
        announce_llm(unknown)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cost cannot be estimated" in warning.getMessage()
    assert "SmolLM2-135M-Instruct-Q4_1" in warning.getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        announce_llm(Settings(llm_provider="anthropic", llm_model="claude-haiku-4-5"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("0.001 / 0.005 USD per 1,000" in r.getMessage() for r in caplog.records)
