"""The commit protocol, in one place: when an input record's offset may be acknowledged.

A sub-batch of input records is acknowledged (faust then commits acknowledged offsets
on its own schedule) only once everything its processing caused is durable, in this
order of events:

1. **Outputs delivered.** A brief is delivered before its case is recorded as briefed
   (the worker awaits it); the sub-batch's dead letters are sent together and their
   deliveries joined to the sub-batch (`output`); settle ticks carry no state.
2. **State delivered.** The table writes the sub-batch made go to their changelogs when
   it closes (`close_sub_batch`), and their delivery is joined to it. Changelog
   deliveries are cumulative: a sub-batch is durable only once every changelog record
   produced before its own is delivered too (`state_durable`).
3. **Offsets acknowledged**, oldest sub-batch first (`settle`), unless a rebalance began
   after the sub-batch started: its records are then read again by the partitions'
   next owner, and processing them twice changes nothing (events are kept by id).

A delivery that still fails after the clients' own retries stops the worker without
acknowledging anything (`undeliverable`): the restart reads those records again.

The futures here are shared. The consumer waits on a sub-batch's future while the LLM
stage's tasks wait on the same changelog tail (`persist`); cancelling one awaiting task
(every rebalance cancels model tasks it hands back) must not cancel the future for the
others, so every wait is on `asyncio.shield` of a future that only this module holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from streamproc.engine.state import ConfluentChangelog

Span = tuple[Any, list[Any]]  # (topic-partition, consecutive records of it)


@dataclass(frozen=True)
class _SubBatch:
    durable: asyncio.Future[None]  # held here only: waited on through shield
    spans: Sequence[Span]
    stamp: Hashable  # the consumer's (generation, epoch) when the sub-batch started


class Checkpoint:
    """Outputs delivered, state durable, offsets acknowledged: see the module docstring."""

    def __init__(
        self,
        changelog: ConfluentChangelog,
        write_state: Callable[[], None],
        undeliverable: Callable[[BaseException], NoReturn],
    ) -> None:
        self.changelog = changelog
        self._write_state = write_state
        self._undeliverable = undeliverable
        self._tail: asyncio.Future[None] | None = None  # every changelog record so far
        self._outputs: list[Awaitable[Any]] = []  # deliveries of the sub-batch in hand
        self._unsettled: deque[_SubBatch] = deque()

    # -- state --------------------------------------------------------------------------

    def _state_tail(self) -> asyncio.Future[None]:
        own = self.changelog.seal()
        before = self._tail
        if before is None or (before.done() and before.exception() is None):
            self._tail = own
        else:
            self._tail = asyncio.ensure_future(_in_order(before, own))
        return self._tail

    def state_durable(self) -> Awaitable[None]:
        """Resolved once every changelog record produced so far is delivered (raises
        ChangelogUndelivered if one was not). Safe to cancel: the tail is shielded."""
        return asyncio.shield(self._state_tail())

    async def persist(self) -> None:
        """Write the cached table changes and wait until the changelog has them (for the
        LLM stage's tasks, which finish while no sub-batch is in hand)."""
        self._write_state()
        await self.state_durable()

    # -- the sub-batch in hand ----------------------------------------------------------

    def output(self, delivery: Awaitable[Any]) -> None:
        """A record the sub-batch in hand sent (a dead letter): acked only once delivered."""
        self._outputs.append(delivery)

    def close_sub_batch(self) -> asyncio.Future[None]:
        """Write the sub-batch's state; the future of its outputs and state being durable."""
        self._write_state()
        self.changelog.poll()  # reports of earlier sub-batches: their offsets can be acked
        state = self._state_tail()
        outputs, self._outputs = self._outputs, []
        if not outputs:
            return state
        return asyncio.ensure_future(_all(state, outputs))

    # -- acknowledgement (the consumer) -------------------------------------------------

    def add(self, durable: asyncio.Future[None], spans: Sequence[Span], stamp: Hashable) -> None:
        """A sub-batch handed to the worker, to be acknowledged once `durable` resolves."""
        self._unsettled.append(_SubBatch(durable, spans, stamp))

    @property
    def unsettled(self) -> int:
        return len(self._unsettled)

    async def settle(
        self,
        keep: int,
        current: Callable[[], Hashable],
        ack: Callable[[Any, list[Any]], Awaitable[None]],
    ) -> None:
        """Acknowledge sub-batches whose outputs and state are durable, oldest first;
        wait for the oldest while more than `keep` are outstanding. A sub-batch started
        under another (generation, epoch) than `current()` is dropped unacknowledged."""
        unsettled = self._unsettled
        while unsettled:
            oldest = unsettled[0]
            if len(unsettled) <= keep and not oldest.durable.done():
                return
            try:
                await asyncio.shield(oldest.durable)
            except asyncio.CancelledError:
                if oldest.durable.cancelled():  # only at loop shutdown: nothing to ack
                    unsettled.popleft()
                raise
            except Exception as exc:
                self._undeliverable(exc)
            unsettled.popleft()
            if oldest.stamp == current():
                for tp, records in oldest.spans:
                    await ack(tp, records)


async def _in_order(first: asyncio.Future[None], second: asyncio.Future[None]) -> None:
    await first
    await second


async def _all(state: asyncio.Future[None], outputs: list[Awaitable[Any]]) -> None:
    for delivery in outputs:
        await delivery
    await state
