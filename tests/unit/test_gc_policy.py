"""The worker's garbage-collection policy: what survives a full collection is frozen."""

from __future__ import annotations

import gc

from streamproc.ops.process import GarbageCollection


def test_survivors_of_a_full_collection_are_frozen_and_nothing_else_is() -> None:
    policy = GarbageCollection()
    try:
        policy.start()
        frozen_at_start = gc.get_freeze_count()
        assert frozen_at_start > 0
        state = [{"account": i, "events": {}} for i in range(5_000)]  # new tracked objects
        policy.freeze_survivors()  # no full collection since: nothing to freeze
        assert gc.get_freeze_count() == frozen_at_start
        gc.collect(1)  # a young collection is not a full one
        policy.freeze_survivors()
        assert gc.get_freeze_count() == frozen_at_start
        gc.collect()  # a full collection: its survivors are frozen at the next check
        policy.freeze_survivors()
        assert gc.get_freeze_count() >= frozen_at_start + len(state)
        walked = {id(o) for o in gc.get_objects()}  # what a full collection would walk
        assert not any(id(s) in walked for s in state)
    finally:
        gc.callbacks.remove(policy._on_collection)
        gc.unfreeze()
