"""Structured logs: one JSON object per line, with case and brief correlation ids.

Correlation ids travel in a context variable (`bind`), so a log call anywhere below
the place that bound them (an LLM task, a retry, the provider client) carries them
without passing them around. Only ids and counters go into logs: never event
values, PII or secrets. Exception messages in this code base never quote values.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson

_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "streamproc_log_context", default=None
)
# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


@contextlib.contextmanager
def bind(**ids: Any) -> Iterator[None]:
    """Attach ids (case_id, brief_id, ...) to every log record made inside the block."""
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **ids})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bound() -> dict[str, Any]:
    return dict(_CONTEXT.get() or {})


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...ids and extras, "exc_type", "exc"}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_CONTEXT.get() or {})
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class RepeatFilter(logging.Filter):
    """Let one record per message template of a client library through every `window_s`.

    While the broker is away, the Kafka clients log the same few errors (connection
    refused, node not ready, metadata failed) dozens of times a second; one line per
    template and window says the same, and the next one that passes carries the number
    held back in `repeated`. Our own loggers (`streamproc.*`) are never filtered.
    """

    def __init__(self, window_s: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window_s, self.clock = window_s, clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("streamproc") or record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.repeated = last[1]  # held back since the last one that passed
        if len(self._seen) > 1000:  # templates are few; never grow without bound
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def configure(level: str, fmt: str) -> None:
    """Point the root logger's handlers at the chosen format and level."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    repeats = RepeatFilter()
    for handler in root.handlers:
        handler.setFormatter(formatter)
        for old in [f for f in handler.filters if isinstance(f, RepeatFilter)]:
            handler.removeFilter(old)
        handler.addFilter(repeats)
    root.setLevel(level.upper())
