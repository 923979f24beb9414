"""Token prices for the LLM cost estimate: the settings, a user's price file, or the
prices shipped for common hosted models (streamproc/data/llm_prices.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from streamproc.config import Settings
from streamproc.errors import ConfigError

SHIPPED = "llm_prices.yaml"
SNAPSHOT = re.compile(r"^(?P<base>.+)-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


@dataclass(frozen=True)
class Price:
    """USD per 1,000 tokens, and where the figure came from (for the start-up line)."""

    prompt_per_1k: float
    completion_per_1k: float
    origin: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens / 1000 * self.prompt_per_1k
            + completion_tokens / 1000 * self.completion_per_1k
        )


def configured_price(settings: Settings) -> Price | None:
    """The price of the configured model, or None when cost cannot be estimated."""
    return price_for(
        settings.llm_model,
        prompt_per_1k=settings.llm_price_prompt_per_1k,
        completion_per_1k=settings.llm_price_completion_per_1k,
        prices_file=settings.llm_prices_file,
    )


def price_for(
    model: str | None,
    *,
    prompt_per_1k: float | None = None,
    completion_per_1k: float | None = None,
    prices_file: Path | None = None,
) -> Price | None:
    """The price of `model`: both settings when given (they win), else the user's price
    file, else the shipped one; None when none knows it (cost cannot be estimated)."""
    if prompt_per_1k is not None or completion_per_1k is not None:
        if prompt_per_1k is None or completion_per_1k is None:
            raise ConfigError(
                "set both STREAMPROC_LLM_PRICE_PROMPT_PER_1K and "
                "STREAMPROC_LLM_PRICE_COMPLETION_PER_1K, or neither (prices then come "
                "from the price files)"
            )
        return Price(prompt_per_1k, completion_per_1k, "settings")
    if not model:
        return None
    tables: list[tuple[str, dict[str, Any]]] = []
    if prices_file is not None:
        try:
            text = prices_file.read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read STREAMPROC_LLM_PRICES_FILE {prices_file}: {exc.strerror}"
            ) from None
        tables.append((str(prices_file), _read(text, str(prices_file))))
    shipped = resources.files("streamproc.data").joinpath(SHIPPED).read_text()
    tables.append((f"shipped prices ({_as_of(shipped)})", _read(shipped, SHIPPED)))
    for origin, table in tables:
        name = _match(model, table)
        if name is not None:
            entry = table[name]
            return Price(entry["prompt_per_1m"] / 1000, entry["completion_per_1m"] / 1000, origin)
    return None


def _match(model: str, table: dict[str, Any]) -> str | None:
    """The entry for `model`: its own, or the entry of which it is a dated snapshot or
    alias (gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022, claude-3-5-haiku-latest).
    Other suffixes name other models (gpt-4o-audio-preview is not priced as gpt-4o)."""
    if model in table:
        return model
    m = SNAPSHOT.match(model)
    return m["base"] if m and m["base"] in table else None


def _read(text: str, origin: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"price file {origin} is not YAML: {exc}") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(f"price file {origin}: expected a 'models:' mapping")
    for name, entry in models.items():
        ok = isinstance(entry, dict) and all(
            isinstance(entry.get(k), int | float) and entry[k] >= 0
            for k in ("prompt_per_1m", "completion_per_1m")
        )
        if not ok:
            raise ConfigError(
                f"price file {origin}: model {name!r} needs prompt_per_1m and "
                "completion_per_1m, in USD per million tokens, not negative"
            )
    return models


def _as_of(text: str) -> str:
    doc = yaml.safe_load(text) or {}
    return f"as of {doc.get('as_of', 'an unknown date')}"
