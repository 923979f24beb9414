"""Write-back table: coalesced changelog writes on the right partition, tombstones, views."""

from __future__ import annotations

from typing import Any

import pytest

from streamproc.engine.state import WriteBackTable


class FakeTopic:
    def get_topic_name(self) -> str:
        return "app-windows-changelog"


class FakeTable:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.changelog_topic = FakeTopic()


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes, bytes | None]] = []

    def produce(self, topic: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.records.append((topic, partition, key, value))


@pytest.fixture()
def parts() -> tuple[WriteBackTable, FakeTable, Sink]:
    table, sink = FakeTable({"old": {"n": 1}, "gone": {"n": 2}}), Sink()
    return WriteBackTable(table, sink), table, sink


def test_writes_are_coalesced_per_key_on_the_last_writers_partition(parts) -> None:  # type: ignore[no-untyped-def]
    wb, table, sink = parts
    wb.partition = 1
    wb["a"] = {"n": 1}
    wb.partition = 4
    wb["a"] = {"n": 2}
    assert table.data.get("a") is None and wb["a"] == {"n": 2}  # not applied before flush
    assert wb.flush() == 1
    assert sink.records == [("app-windows-changelog", 4, b'"a"', b'{"n":2}')]
    assert table.data["a"] == {"n": 2} and wb.flush() == 0


def test_delete_is_a_tombstone_and_hides_the_key(parts) -> None:  # type: ignore[no-untyped-def]
    wb, table, sink = parts
    wb.partition = 2
    del wb["gone"]
    assert "gone" not in wb and wb.get("gone") is None
    with pytest.raises(KeyError):
        del wb["never"]
    wb.flush()
    assert sink.records == [("app-windows-changelog", 2, b'"gone"', None)]
    assert "gone" not in table.data


def test_len_and_iteration_see_pending_writes(parts) -> None:  # type: ignore[no-untyped-def]
    wb, _, _ = parts
    wb["new"] = 1
    del wb["gone"]
    wb["old"] = {"n": 9}
    assert len(wb) == 2
    assert sorted(wb) == ["new", "old"]
    assert dict(wb.items()) == {"new": 1, "old": {"n": 9}}
