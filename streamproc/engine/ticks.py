"""Settle ticks: work the timer finds due, sent through Kafka to the key's own partition.

faust lets tables change only while a record of the right partition is handled, so the
timer never touches state: it finds what is due and sends a tick; the agent acts on it.
Three operations, all idempotent (a tick re-checks that its work is still due):
    brief   a pending case's settle delay is over: assemble and brief it
    retire  a briefed case has been kept CASE_RETAIN_H: forget it
    expire  an account's window has not been written for LOOKBACK_H: drop it
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from streamproc.engine.dlq import Outgoing, Record

RESEND_S = 10.0  # a tick not acted on (lost, or its worker died) is sent again after this
GRACE_S = 0.25  # a busy agent briefs due cases itself; ticks are for cases it has not reached


class Op(StrEnum):
    BRIEF = "brief"
    RETIRE = "retire"
    EXPIRE = "expire"


@dataclass(frozen=True)
class Tick:
    op: Op
    key: str  # case_id for brief/retire, account_id for expire
    account_id: str
    partition: int

    def message(self, topic: str) -> Outgoing:
        value = json.dumps({"op": self.op.value, "key": self.key}).encode()
        return Outgoing(topic, self.account_id.encode(), value, partition=self.partition)


def parse(msg: Record) -> tuple[Op, str] | None:
    """(op, key) of a tick record, or None when it is not one."""
    try:
        body = json.loads(msg.value or b"")
        return Op(body.get("op", Op.BRIEF)), str(body.get("key") or body["case_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class TickScheduler:
    """Finds due work in the tables; remembers what it sent so it does not flood Kafka."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, str, float], float] = {}

    def _fresh(self, key: tuple[str, str, float], now: float) -> bool:
        if now - self._sent.get(key, 0.0) < RESEND_S:
            return False
        self._sent[key] = now
        return True

    def briefs(self, pending: Mapping[str, Any], active: set[int], now: float) -> list[Tick]:
        ticks, live = [], set()
        for case_id, p in list(pending.items()):
            key = (Op.BRIEF.value, case_id, p["due"])  # a rescheduled case is ticked afresh
            live.add(key)
            overdue = p["partition"] in active and p["due"] + GRACE_S <= now
            if overdue and self._fresh(key, now):
                ticks.append(Tick(Op.BRIEF, case_id, p["account_id"], p["partition"]))
        for key in [k for k in self._sent if k[0] == Op.BRIEF.value and k not in live]:
            del self._sent[key]
        return ticks

    def sweep(
        self,
        cases: Mapping[str, Any],
        windows: Mapping[str, Any],
        active: set[int],
        now: float,
        lookback_s: float,
    ) -> list[Tick]:
        """Retire cases past their retention, expire windows idle for the lookback."""
        ticks = []
        for case_id, c in list(cases.items()):
            at = c.get("retire_at")
            due = at is not None and at <= now and c.get("partition") in active
            if due and self._fresh((Op.RETIRE.value, case_id, at), now):
                ticks.append(Tick(Op.RETIRE, case_id, c["account_id"], c["partition"]))
        for account, w in list(windows.items()):
            touched = w.get("wt", now)
            idle = now - touched > lookback_s and w.get("p") in active
            if idle and self._fresh((Op.EXPIRE.value, account, touched), now):
                ticks.append(Tick(Op.EXPIRE, account, account, w["p"]))
        stale = [
            k for k, at in self._sent.items() if k[0] != Op.BRIEF.value and now - at > RESEND_S
        ]
        for key in stale:
            del self._sent[key]
        return ticks
