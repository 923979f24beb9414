"""Consumer lag: records on the worker's partitions not read yet (faust keeps the offsets)."""

from __future__ import annotations

import faust
from faust.types import TP

from streamproc.engine import internals


def partition_lag(app: faust.App, topic: str, partition: int) -> int | None:
    """Records left to read on one partition; None when not known (not fetched yet)."""
    consumer = app.consumer
    try:
        tp = TP(topic, partition)
        highwater = consumer.highwater(tp)
    except Exception:
        return None
    if highwater is None:
        return None
    # faust keeps the last offset read and the committed offset (the next one to read).
    last_read = internals.read_offset(app, topic, partition)
    committed = internals.committed_offset(app, topic, partition)
    position = last_read + 1 if last_read is not None else committed or 0
    return max(0, int(highwater) - int(position))


def consumer_lag(app: faust.App, topics: tuple[str, ...]) -> dict[str, int]:
    """Per topic, records on our assigned partitions not read yet."""
    lag = dict.fromkeys(topics, 0)
    try:
        assigned = app.consumer.assignment()
    except Exception:  # not started, or stopping
        return lag
    for tp in assigned:
        if tp.topic in lag:
            lag[tp.topic] += partition_lag(app, tp.topic, tp.partition) or 0
    return lag
