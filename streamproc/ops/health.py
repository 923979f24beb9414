"""What /readyz reports: the worker is started, reaches its broker (and registry), is not
rebalancing, its fetcher runs, it consumes while it has input to consume, and its state
can be written. Each check is a field of the answer, so an SRE sees which one failed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamproc.contracts.codec import AvroCodec

log = logging.getLogger(__name__)
FETCH_STALL_S = 30.0  # the fetch loop turns at least once a second when it runs
CONSUME_STALL_S = 60.0  # input waiting, partitions held, nothing consumed for this long
STATE_STALL_S = 30.0  # a changelog batch undelivered for this long: state is not written


@dataclass(frozen=True)
class Snapshot:
    """The worker's state as the checks need it, taken when /readyz is asked."""

    rebalancing: bool
    fetch_loop_age_s: float | None  # since the fetch loop last turned; None: not yet
    state_undelivered_s: float  # age of the oldest undelivered changelog batch (0: none)
    state_failed: bool  # a changelog delivery failed (the worker is exiting)


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = False
        self.broker_ok = False
        self.registry_ok: bool | None = None  # None: no registry configured
        self._consumed = -1
        self._progress_at = clock()  # when consumption last moved (or had nothing to do)

    def observe_progress(self, consumed: int, lag: int, holding: bool, rebalancing: bool) -> None:
        """Each lag sample: records handled so far, records left on held partitions."""
        if consumed != self._consumed or lag == 0 or not holding or rebalancing:
            self._consumed, self._progress_at = consumed, self.clock()

    def check(self, now: Snapshot) -> tuple[bool, dict[str, bool]]:
        age = now.fetch_loop_age_s
        checks = {
            "started": self.started,
            "broker_reachable": self.broker_ok,
            "not_rebalancing": not now.rebalancing,
            "fetching": now.rebalancing or (age is not None and age < FETCH_STALL_S),
            "consuming": self.clock() - self._progress_at < CONSUME_STALL_S,
            "state_writable": not now.state_failed and now.state_undelivered_s < STATE_STALL_S,
        }
        if self.registry_ok is not None:
            checks["registry_reachable"] = self.registry_ok
        return all(checks.values()), checks


async def registry_answers(codec: AvroCodec, outputs: tuple[str, ...], was: bool | None) -> bool:
    """Register the output schemas until that succeeds, then check the registry answers;
    in a thread, with the client's timeout (never on the event loop)."""
    registry = codec.registry
    assert registry is not None
    try:
        if not codec.registered(outputs):
            await codec.register_outputs(outputs)
        else:
            await asyncio.to_thread(registry.ping)
    except Exception as exc:
        if was is not False:
            log.warning("schema registry not reachable: %s", type(exc).__name__)
        return False
    return True


async def broker_reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when at least one bootstrap address accepts a TCP connection."""
    for hostport in bootstrap.split(","):
        host, _, port = hostport.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False
