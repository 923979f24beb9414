"""Entry point of the `streamproc` command: parses arguments, builds Settings, dispatches."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from streamproc.config import Settings
from streamproc.errors import StreamprocError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamproc", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run the stream processor")
    topics = sub.add_parser("topics", help="topic administration")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_sub.add_parser("apply", help="create or update the topics declared in topics/")
    broker = sub.add_parser("broker", help="embedded Kafka-compatible broker, in the foreground")
    broker.add_argument("--listen", default="127.0.0.1:9092", metavar="HOST:PORT")
    pub = sub.add_parser("publish", help="encode JSONL events with the topic's schema and produce")
    pub.add_argument("topic")
    pub.add_argument("file", help="JSON Lines file, or - for standard input")
    tail = sub.add_parser("tail", help="print decoded records, one JSON object per line")
    tail.add_argument("topic")
    tail.add_argument("--max", type=int, default=None, dest="max_records")
    tail.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="stop after S seconds (default 10)"
    )
    tail.add_argument(
        "--iso",
        action="store_true",
        help="timestamps as ISO-8601 UTC strings (default: epoch milliseconds, as the "
        "published JSON Schema of the brief says)",
    )
    fb = sub.add_parser("feedback", help="analysts' decisions on briefs")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    export = fb_sub.add_parser(
        "export", help="write the decided cases as a labelled set `make eval` reads"
    )
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="each topic is read to its end; fail if that takes over S seconds (default 300)",
    )
    sim = sub.add_parser("simulate", help="write the seeded, labelled scenario set as JSONL")
    sim.add_argument("--out", type=Path, required=True, metavar="DIR")
    sim.add_argument(
        "--seed",
        type=int,
        action="append",
        dest="seeds",
        metavar="N",
        help="a generator seed; repeat for a set made from several (default 42)",
    )
    sim.add_argument("--per-kind", type=int, default=3, help="cases of each kind, per seed")
    sim.add_argument("--noise-accounts", type=int, default=0, help="accounts with history only")
    sim.add_argument("--noise-days", type=int, default=3)
    sim.add_argument(
        "--now", default=None, help="ISO time or 'now' (default: a fixed time, so seeds repeat)"
    )
    demo = sub.add_parser("demo", help="broker, topics, worker and synthetic traffic, all embedded")
    demo.add_argument("--follow", action="store_true", help="keep running after the scenario")
    demo.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up after S seconds (default 180; 900 with --local-model)",
    )
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--local-model",
        action="store_true",
        help="a local model writes the briefs: llama.cpp's server and SmolLM2-135M, "
        "installed into --models on first use (about 160 MB)",
    )
    demo.add_argument("--models", type=Path, default=Path(".models"), metavar="DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
        return _dispatch(args, settings)
    except StreamprocError as exc:
        print(f"streamproc: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:  # a setting out of range; never echo its value
        for err in exc.errors():
            name = "STREAMPROC_" + "_".join(str(part) for part in err["loc"]).upper()
            print(f"streamproc: error: {name}: {err['msg']}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        from streamproc.cli.worker import run_worker

        return run_worker(settings)
    if args.command == "topics":
        return _topics_apply(settings)
    if args.command == "broker":
        return _broker(args.listen)
    if args.command == "publish":
        return _publish(settings, args.topic, args.file)
    if args.command == "tail":
        return _tail(settings, args.topic, args.max_records, args.timeout, args.iso)
    if args.command == "feedback":
        return _feedback_export(settings, args.out, args.timeout)
    if args.command == "simulate":
        from streamproc.cli.simulate import run_simulate

        return run_simulate(
            args.out,
            seeds=args.seeds or [42],
            per_kind=args.per_kind,
            noise_accounts=args.noise_accounts,
            noise_days=args.noise_days,
            now=args.now,
        )
    from streamproc.cli.demo import run_demo

    return run_demo(
        settings,
        follow=args.follow,
        timeout_s=args.timeout,
        seed=args.seed,
        models=args.models if args.local_model else None,
    )


def _topics_apply(settings: Settings) -> int:
    from streamproc.contracts.topics import load_topics
    from streamproc.kafka.admin import admin_client, apply_topics

    result = apply_topics(admin_client(settings), load_topics())
    for name in result.created:
        print(f"created  {name}")
    for name in result.existing:
        print(f"exists   {name}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _broker(listen: str) -> int:
    import time

    from streamproc.kafka.broker import EmbeddedBroker

    host, _, port = listen.rpartition(":")
    broker = EmbeddedBroker(host or "127.0.0.1", int(port))
    with broker.running():
        print(
            f"embedded broker (Tansu, memory storage) on {broker.bootstrap}; Ctrl-C stops it",
            flush=True,
        )
        while broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.5)
    return 0


def _feedback_export(settings: Settings, out: Path, timeout_s: float) -> int:
    from streamproc.cli.feedback import export_from_kafka
    from streamproc.cli.kafkaio import make_codec

    export = export_from_kafka(settings, make_codec(settings), out, timeout_s)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(export.skipped.items())) or "none"
    print(
        f"exported {len(export.labels)} decided case(s) to {out} (skipped: {skipped}); "
        f"evaluate them with: make eval ARGS='--include analysts={out}'",
        file=sys.stderr,
    )
    return 0


def _publish(settings: Settings, topic: str, file: str) -> int:
    from streamproc.cli.kafkaio import publish_lines

    if file == "-":
        report = publish_lines(settings, topic, sys.stdin)
    else:
        path = Path(file)
        if not path.is_file():
            print(f"streamproc: error: {file}: no such file", file=sys.stderr)
            return EXIT_USAGE
        with path.open(encoding="utf-8") as fh:
            report = publish_lines(settings, topic, fh)
    for lineno, message in report.errors:
        print(f"{file}:{lineno}: {message}", file=sys.stderr)
    print(
        f"published {report.sent} record(s) to {topic}; {len(report.errors)} bad line(s)",
        file=sys.stderr,
    )
    return 0 if report.ok else 1


def _tail(
    settings: Settings, topic: str, max_records: int | None, timeout_s: float, iso_times: bool
) -> int:
    from streamproc.cli.kafkaio import read_records

    count = 0
    records = read_records(
        settings, topic, max_records=max_records, timeout_s=timeout_s, iso_times=iso_times
    )
    for record in records:
        print(json.dumps(record, ensure_ascii=False), flush=True)
        count += 1
    if max_records is not None and count < max_records:
        print(
            f"streamproc: timeout after {timeout_s:g}s with {count} of {max_records} record(s)",
            file=sys.stderr,
        )
        return 1
    return 0
