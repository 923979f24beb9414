"""The peer: Quix Streams keeping per-account state in RocksDB with a changelog.

Runs in .venv-bench-peer. Same input topics, same per-key update (count and newest event
time per account). Prints one JSON line: events, seconds, events_per_s.
"""

import io
import json
import sys
import time
from pathlib import Path

from fastavro import parse_schema, schemaless_reader
from quixstreams import Application
from quixstreams.models import TopicConfig

bootstrap, n, state_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = Application(
    broker_address=bootstrap,
    consumer_group="bench-quix",
    auto_offset_reset="earliest",
    state_dir=state_dir,
    use_changelog_topics=True,
    loglevel="WARNING",
)
cfg = TopicConfig(
    num_partitions=6, replication_factor=1, extra_config={"retention.ms": "604800000"}
)
topics = [
    app.topic(t, value_deserializer="bytes", key_deserializer="bytes", config=cfg)
    for t in ("fraud.transactions.v1", "fraud.device-signals.v1")
]
seen = {"n": 0, "t0": 0.0, "t1": 0.0}
schemas_dir = Path(__file__).resolve().parent.parent / "schemas"
readers = {
    "fraud.transactions.v1": parse_schema(
        json.loads((schemas_dir / "transaction.avsc").read_text())
    ),
    "fraud.device-signals.v1": parse_schema(
        json.loads((schemas_dir / "device_signal.avsc").read_text())
    ),
}


def decode(value: bytes, topic: str) -> dict:
    buf = io.BytesIO(value)
    buf.seek(10)  # single-object header: 2 magic bytes + 8-byte fingerprint
    return schemaless_reader(buf, readers[topic], readers[topic])


def update(value, key, timestamp, headers, state):
    record = decode(value, current_topic())
    timestamp = record["occurred_at"].timestamp()
    entry = state.get("acct") or {"count": 0, "last": 0}
    entry["count"] += 1
    entry["last"] = max(entry["last"], timestamp)
    state.set("acct", entry)
    seen["n"] += 1
    if seen["n"] == 1:
        seen["t0"] = time.monotonic()
    if seen["n"] >= n:
        seen["t1"] = time.monotonic()
        app.stop()
    return value


def current_topic() -> str:
    from quixstreams.context import message_context

    return message_context().topic


for topic in topics:
    app.dataframe(topic).update(update, metadata=True, stateful=True)
app.run()
elapsed = (seen["t1"] or time.monotonic()) - seen["t0"]
print(
    json.dumps(
        {
            "events": seen["n"],
            "seconds": round(elapsed, 2),
            "events_per_s": round(seen["n"] / elapsed) if elapsed else 0,
        }
    )
)
