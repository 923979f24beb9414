"""The inputs gate's ask: log-end offsets of the inputs of partitions with a case pending.

A case is briefed once its inputs are read up to the alert's time or to offsets asked
after the alert came (engine/inputs.py keeps the answers). One ask is out at a time; a
case held meanwhile gets the next one as soon as the answer comes. Asked as soon as a
case is held (`ask_now`), not by waking a waiting task, which took a few turns of the
event loop, each one a sub-batch long; and every RECHECK_S as a fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import faust
from faust.types import TP

from streamproc.engine import internals
from streamproc.engine.processor import CaseProcessor

log = logging.getLogger(__name__)


class LogEndAsker:
    def __init__(
        self,
        app: faust.App,
        processor: CaseProcessor,
        events: tuple[str, ...],
        active_partitions: Callable[[], set[int]],
        serving: Callable[[], bool],
        on_released: Callable[[], Awaitable[None]],
    ) -> None:
        """`on_released` briefs what an answer released (the worker's due cases)."""
        self.app, self.processor, self.events = app, processor, events
        self.active_partitions, self.serving, self.on_released = (
            active_partitions,
            serving,
            on_released,
        )
        self._ask: asyncio.Task[None] | None = None
        self._again = False

    def ask_now(self) -> None:
        if self.app.should_stop:
            return
        if self._ask is not None:
            self._again = True
            return
        self._again = False
        self._ask = asyncio.ensure_future(self.recheck())

    async def recheck(self) -> None:
        """Ask, and brief what the answer releases (never while not serving: a case of a
        partly restored partition must not be briefed)."""
        try:
            if self.serving() and await self._ask_log_ends() and self.processor.recheck_gated(None):
                await self.on_released()
        except Exception:  # the cases stay gated; the next ask or RECHECK_S retries
            log.exception("the inputs gate's ask failed")
        finally:
            self._ask = None
        if self._again:
            self.ask_now()

    async def settle(self, grace_s: float) -> None:
        """At shutdown: let an answer being acted on finish; cancel a hung ask."""
        if (ask := self._ask) is not None:
            self._again = False
            done, _ = await asyncio.wait({ask}, timeout=grace_s)
            if not done:
                ask.cancel()

    async def _ask_log_ends(self) -> bool:
        waiting = self.processor.partitions_waiting(self.active_partitions())
        if not waiting:
            return False
        tps = [TP(topic, p) for topic in self.events for p in waiting]
        asked_at = time.time()
        inputs = self.processor.inputs
        positions = {tp: inputs.position(tp.topic, tp.partition) for tp in tps}
        known = {tp: n for tp, n in positions.items() if n is not None}
        try:
            ends = await internals.log_ends_from(self.app, known)
            if unanswered := [tp for tp in tps if tp not in ends]:  # never read; out of range
                ends.update(await self.app.consumer.highwaters(*unanswered))
        except Exception:  # broker away, rebalancing: cases wait, at most CASE_MAX_WAIT_S
            log.debug("log-end offsets not available", exc_info=True)
            return False
        inputs.note_end_offsets({(tp.topic, tp.partition): n for tp, n in ends.items()}, asked_at)
        return True
