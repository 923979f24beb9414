"""How far this worker has read each input partition, and how far its log went when asked.

The case processor holds a due case back while an input partition of the case is
behind the alert (the inputs gate); this is what it asks. Per input (topic, partition):
the newest event time processed (stream time), the next offset to process, and the
broker's recent answers for the log-end offset, (wall time of asking, offset), oldest
first. Plain dicts, in memory: after a restart they fill again from what is read.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from typing import Any

END_OFFSETS_KEPT = 64  # answers kept per input partition: about two seconds of asks

Key = tuple[str, int]  # (topic, partition)


class InputProgress:
    def __init__(
        self,
        topics: tuple[str, ...],
        clock: Callable[[], float],
        committed: Callable[[str, int], int | None],
    ) -> None:
        """`topics` are the inputs a case waits for; `committed` says where the group
        resumes on a partition this worker has not read from yet."""
        self.topics = topics
        self.clock = clock
        self.committed = committed
        self.stream_time: dict[Key, int] = {}
        self.read_to: dict[Key, int] = {}
        self.end_offsets: dict[Key, list[tuple[float, int]]] = {}

    def behind(self, partition: int, event_time_ms: int, since: float) -> bool:
        """An input partition has not reached `event_time_ms` and still has records,
        there when the broker was asked after `since`, left to process."""
        for topic in self.topics:
            reached = self.stream_time.get((topic, partition), 0) >= event_time_ms
            if not reached and not self.caught_up(topic, partition, since):
                return True
        return False

    def caught_up(self, topic: str, partition: int, since: float) -> bool:
        """Every record on (topic, partition) when the broker was asked, asked after `since`
        (the alert's arrival), has been processed here.

        Two shortcuts would be wrong. The consumer's read position runs ahead of what the
        worker has processed (fetched records wait in its buffer). And the high watermark a
        fetch brings back is as old as that fetch: a partition with records still buffered
        is not fetched again, so its watermark can predate records published before the
        alert. Hence a log-end offset asked of the broker after the alert came.

        Any answer asked after `since` will do, and the smallest is the one to reach: it
        holds every record there was when the alert came. The log only grows, so that is
        usually the first answer after the alert; later ones hold records published after
        the alert too, and waiting for the newest answer made a case wait for as long as
        input kept coming while the worker lagged."""
        answers = self.end_offsets.get((topic, partition))
        if not answers:
            return False
        after = bisect.bisect_right(answers, (since, float("inf")))  # asked strictly after
        if after == len(answers):
            return False
        end = min(offset for _asked_at, offset in answers[after:])
        position = self.position(topic, partition)
        return end == 0 or (position is not None and position >= end)

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset to process on an input partition; None before anything was
        read there or committed."""
        return self.read_to.get((topic, partition), self.committed(topic, partition))

    def note_end_offsets(self, offsets: dict[Key, int], asked_at: float) -> None:
        """Log-end offsets the broker gave for a request sent at `asked_at` (wall time)."""
        for key, offset in offsets.items():
            answers = self.end_offsets.setdefault(key, [])
            bisect.insort(answers, (asked_at, int(offset)))  # asks may overlap
            del answers[:-END_OFFSETS_KEPT]

    def report(self, partition: int, event_time_ms: int) -> dict[str, Any]:
        """Offsets and stream time of a case's input partitions (ids and counts only)."""
        out: dict[str, Any] = {}
        for topic in self.topics:
            answers = self.end_offsets.get((topic, partition))
            end = (answers[-1][1], answers[-1][0]) if answers else None
            reached = self.stream_time.get((topic, partition), 0)
            out[topic] = {
                "partition": partition,
                "processed_to": self.read_to.get((topic, partition)),
                "resumed_at": self.committed(topic, partition),
                "log_end": None if end is None else end[0],
                "log_end_age_s": None if end is None else round(self.clock() - end[1], 1),
                "event_time_behind_s": max(0, event_time_ms - reached) // 1000,
            }
        return out
