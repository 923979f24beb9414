"""The worker briefs nothing and writes nothing while it rebalances or restores state: a
case whose window is only partly restored must not be briefed from it (by the inputs
gate's timer, once CASE_MAX_WAIT_S has passed, or by any other path)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from streamproc.config import Settings
from streamproc.contracts.codec import AvroCodec
from streamproc.contracts.schemas import SchemaSet
from streamproc.engine.app import CaseWorker
from streamproc.engine.processor import BriefPlan
from streamproc.kafka.broker import free_port
from streamproc.ops.metrics import Metrics
from tests.conftest import ALERT_TOPIC, NOW_MS, normalized


def _worker() -> CaseWorker:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", case_settle_s=0,
                        case_max_wait_s=0)  # fmt: skip
    return CaseWorker(settings, AvroCodec(SchemaSet()), Metrics(CollectorRegistry()), 6, 1)


def test_a_due_case_waits_while_the_worker_rebalances_or_restores(schemas: SchemaSet) -> None:
    async def main() -> None:
        worker = _worker()
        published: list[BriefPlan] = []

        async def publish_together(plans: list[BriefPlan]) -> None:
            published.extend(plans)

        worker._publish_together = publish_together  # type: ignore[method-assign]
        worker._active_partitions = lambda: {0}  # type: ignore[method-assign]
        alert: dict[str, Any] = {
            "event_id": "evt-a1", "alert_id": "alr-1", "case_id": "case-1",
            "account_id": "acct-1", "occurred_at": NOW_MS, "rule_id": "R-1",
            "rule_name": "rule", "severity": "HIGH", "transaction_ids": [],
        }  # fmt: skip
        [record] = normalized(schemas, ALERT_TOPIC, [alert])
        worker.processor._on_alert(record, 0)
        worker.health.started = worker._serving = True
        worker.app.rebalancing = True  # a rebalance: state is being restored
        await worker.brief_due_cases()
        assert published == [] and "case-1" in worker.processor.pending
        await asyncio.wait_for(worker.asker.recheck(), 5)  # the inputs gate's timer path
        assert published == [] and "case-1" in worker.processor.pending
        worker.app.rebalancing = False  # restored: now it is briefed
        await worker.brief_due_cases()
        assert [p.case_id for p in published] == ["case-1"]

    asyncio.run(main())


def test_a_sub_batchs_dead_letters_are_sent_together_and_acked_with_its_state() -> None:
    """Bad records are not dead-lettered one delivery at a time inside the batch: all are
    queued, and the sub-batch becomes durable only once every one is delivered."""

    async def main() -> None:
        from streamproc.engine.dlq import InMessage

        worker = _worker()
        worker.health.started = worker._serving = True
        queued: list[asyncio.Future[None]] = []

        async def send_nowait(out: Any) -> asyncio.Future[None]:
            queued.append(asyncio.get_running_loop().create_future())
            return queued[-1]

        worker._send_nowait = send_nowait  # type: ignore[method-assign]
        bad = [InMessage("fraud.transactions.v1", 0, i, b"acct-1", b"junk") for i in range(3)]
        durable = await asyncio.wait_for(worker.handle(bad), 5)  # not held up by deliveries
        assert len(queued) == 3 and not durable.done()
        queued[0].set_result(None)
        queued[1].set_result(None)
        await asyncio.sleep(0.05)
        assert not durable.done()  # one dead letter is still on its way
        queued[2].set_result(None)
        await asyncio.wait_for(asyncio.shield(durable), 5)

    asyncio.run(main())
