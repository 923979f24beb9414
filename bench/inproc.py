"""Ingest in process, without Kafka: the worker's CaseProcessor and write-back tables
over dicts, the changelog a counting sink, the bench's own events (owned entities:
every index partition is this process's, as with one worker).

    python -m bench.inproc [--links] [--events N] [--once]

Prints CPU µs per event (best of four runs). With `--once` it runs one pass and prints
nothing, for an instruction count that does not depend on the machine's load:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python -m bench.inproc --events 20000 --once [--links]

minus the same with `--events 20000 --setup-only`, divided by 20,000.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace
from typing import Any

from murmurhash2 import murmurhash2

from bench.workload import events
from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.engine.dlq import InMessage
from streamproc.engine.network import Network
from streamproc.engine.processor import MURMUR2_SEED, CaseProcessor
from streamproc.engine.state import WriteBackTable
from streamproc.network.entities import EntityHasher
from streamproc.ops.metrics import Metrics
from streamproc.ops.process import GarbageCollection

PARTITIONS, SUB_BATCH = 6, 500


class _Sink:
    def __init__(self) -> None:
        self.n = 0

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.n += 1


def _table(name: str, sink: _Sink) -> WriteBackTable:
    table = SimpleNamespace(
        data={}, changelog_topic=SimpleNamespace(get_topic_name=lambda: f"{name}-changelog")
    )
    return WriteBackTable(table, sink, table.data)


def _processor(links: bool, sink: _Sink) -> tuple[CaseProcessor, dict[str, WriteBackTable]]:
    settings, metrics = Settings(), Metrics()
    tables = {n: _table(n, sink) for n in ("windows", "cases", "pending", "entities")}
    network = (
        Network(
            settings,
            EntityHasher(b"k" * 32),
            metrics,
            tables["entities"],
            sink.produce,
            PARTITIONS,
            owns=lambda _p: True,
        )
        if links
        else None
    )
    processor = CaseProcessor(settings, AvroCodec(SchemaSet()), metrics, tables["windows"],
                              tables["cases"], tables["pending"], partitions=PARTITIONS,
                              network=network)  # fmt: skip
    return processor, tables


def _run(messages: list[InMessage], links: bool, gc: GarbageCollection) -> None:
    sink = _Sink()
    processor, tables = _processor(links, sink)
    for i in range(0, len(messages), SUB_BATCH):
        if i % 20_000 == 0:  # the worker freezes survivors on a timer (about every 1 s)
            gc.freeze_survivors()
        for message in messages[i : i + SUB_BATCH]:
            for table in tables.values():
                table.partition = message.partition
            processor.on_input(message)
        processor.count_consumed()
        for table in tables.values():
            table.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", action="store_true")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--setup-only", action="store_true")
    args = ap.parse_args(argv)
    messages: list[Any] = []
    for i, e in enumerate(events(args.events, args.events // 2)):
        partition = (murmurhash2(e.key, MURMUR2_SEED) & 0x7FFFFFFF) % PARTITIONS
        messages.append(InMessage(e.topic, partition, i, e.key, e.value, []))
    gc = GarbageCollection()
    gc.start()
    if args.setup_only:
        return 0
    if args.once:
        _run(messages, args.links, gc)
        return 0
    best = []
    for _ in range(4):
        started = time.process_time()
        _run(messages, args.links, gc)
        best.append(time.process_time() - started)
    per_event = [f"{b / args.events * 1e6:.2f}" for b in best]
    print(f"links={'on' if args.links else 'off'}: {min(per_event, key=float)} µs CPU an event "
          f"(best of 4: {', '.join(per_event)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
