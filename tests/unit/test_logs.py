"""JSON log lines carry the ids bound for a case, extras and exceptions; text stays text."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from streamproc.ops import logs


@pytest.fixture()
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    root.handlers = [logging.StreamHandler(stream)]
    logs.configure("info", "json")
    try:
        yield stream
    finally:
        root.handlers, root.level = saved_handlers, saved_level


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_bound_ids_extras_and_level(captured: io.StringIO) -> None:
    log = logging.getLogger("streamproc.test")
    with logs.bind(case_id="case-1", brief_id="b-1"):
        log.info("brief published", extra={"method": "LLM", "latency_ms": 12})
        with logs.bind(brief_id="b-2"):
            log.warning("inner")
    log.info("outside")
    log.debug("not at info")
    first, inner, outside = _lines(captured)
    assert first["msg"] == "brief published" and first["level"] == "info"
    assert (first["case_id"], first["brief_id"]) == ("case-1", "b-1")
    assert (first["method"], first["latency_ms"]) == ("LLM", 12)
    assert first["logger"] == "streamproc.test" and str(first["ts"]).endswith("Z")
    assert (inner["case_id"], inner["brief_id"], inner["level"]) == ("case-1", "b-2", "warning")
    assert "case_id" not in outside


def test_ids_follow_asyncio_tasks_without_leaking_between_them(captured: io.StringIO) -> None:
    log = logging.getLogger("streamproc.test")

    async def brief(case_id: str) -> None:
        with logs.bind(case_id=case_id):
            await asyncio.sleep(0.01)
            log.info("done")

    async def main() -> None:
        await asyncio.gather(brief("a"), brief("b"), brief("c"))

    asyncio.run(main())
    assert sorted(str(r["case_id"]) for r in _lines(captured)) == ["a", "b", "c"]


def test_exceptions_are_one_line_with_type(captured: io.StringIO) -> None:
    try:
        raise ValueError("field 'amount' out of range")
    except ValueError:
        logging.getLogger("x").exception("record failed")
    [line] = captured.getvalue().splitlines()
    record = json.loads(line)
    assert record["exc_type"] == "ValueError"
    assert "Traceback" in str(record["exc"])


def test_text_format_for_a_terminal(captured: io.StringIO) -> None:
    logs.configure("warning", "text")
    logging.getLogger("y").info("hidden")
    logging.getLogger("y").warning("shown")
    assert captured.getvalue().strip().endswith("WARNING y: shown")


def test_client_library_repeats_are_held_back_and_counted() -> None:
    now = [0.0]
    f = logs.RepeatFilter(window_s=10.0, clock=lambda: now[0])

    def rec(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, "x", 1, msg, ("node-1",), None)

    storm = [f.filter(rec("aiokafka", "Unable connect to node %s")) for _ in range(50)]
    assert storm == [True] + [False] * 49
    assert f.filter(rec("aiokafka", "Unable to update metadata from %s"))  # another template
    assert all(f.filter(rec("streamproc.engine.app", "changelog write failed")) for _ in range(5))
    assert all(f.filter(rec("aiokafka", "joined", logging.INFO)) for _ in range(5))
    now[0] = 10.5
    passed = rec("aiokafka", "Unable connect to node %s")
    assert f.filter(passed)
    assert passed.repeated == 49  # type: ignore[attr-defined]
    again = rec("aiokafka", "Unable connect to node %s")
    assert not f.filter(again)
