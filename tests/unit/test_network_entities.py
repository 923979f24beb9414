"""Entities and the entity index's entries: pure logic, no Kafka (issue 25, part 1)."""

from __future__ import annotations

import json

import pytest

from streamproc.errors import ConfigError
from streamproc.network.entities import EntityHasher, EntityKind, linkable
from streamproc.network.index import (
    DECISION_RETAIN_D,
    MAX_ACCOUNTS,
    EntityEntry,
    max_bytes,
)

KEY = b"k" * 32
H = 3_600_000


def test_spellings_of_one_value_are_one_entity_and_the_key_is_not_the_value() -> None:
    h = EntityHasher(KEY)
    pan = h.key_of(EntityKind.CARD, "4111 1111 1111 1111")
    assert pan == h.key_of(EntityKind.CARD, "4111-1111-1111-1111")
    assert h.key_of(EntityKind.IBAN, "gb82 west 1234 5698 7654 32") == h.key_of(
        EntityKind.IBAN, "GB82WEST12345698765432"
    )
    assert h.key_of(EntityKind.EMAIL, " Ann.Lee@Example.com") == h.key_of(
        EntityKind.EMAIL, "ann.lee@example.com"
    )
    assert pan is not None and "4111" not in pan and len(pan) == 32
    # Keyed: another key gives another hash, so a guessed value cannot be looked up.
    assert EntityHasher(b"x" * 32).key_of(EntityKind.CARD, "4111111111111111") != pan
    # The kind is part of the key: a device id that spells an email is not the email.
    assert h.key_of(EntityKind.DEVICE, "a@b.example") != h.key_of(EntityKind.EMAIL, "a@b.example")


def test_private_addresses_and_empty_values_link_nothing() -> None:
    h = EntityHasher(KEY)
    for ip in ("10.1.2.3", "192.168.0.1", "127.0.0.1", "100.64.0.9", "not an ip"):
        assert h.key_of(EntityKind.IP, ip) is None, ip
    assert h.key_of(EntityKind.IP, "81.2.69.160") is not None
    assert h.key_of(EntityKind.DEVICE, "   ") is None


def test_a_short_key_is_refused_with_the_setting_named() -> None:
    with pytest.raises(ConfigError, match="STREAMPROC_ENTITY_KEY"):
        EntityHasher(b"short")


def test_the_entities_of_events_cite_their_events() -> None:
    h = EntityHasher(KEY)
    txs = [
        {"event_id": "e1", "device_id": "dev-1", "counterparty_iban": "GB82WEST12345698765432",
         "card_pan": None, "ip_address": "10.0.0.1", "direction": "DEBIT"},
        {"event_id": "e3", "counterparty_iban": "DE89370400440532013000", "direction": "CREDIT"},
        {"event_id": "e2", "device_id": "dev-1", "counterparty_iban": None,
         "card_pan": "4111111111111111", "ip_address": "81.2.69.160"},
    ]  # fmt: skip

    def refs(kind: str, records: list[dict[str, object]]) -> list[tuple[EntityKind, str]]:
        return [
            (entity_kind, str(r["event_id"]))
            for r in records
            for entity_kind, value in linkable(kind, r)
            if h.key_of(entity_kind, value) is not None
        ]

    assert sorted((k.value, e) for k, e in refs("transaction", txs)) == [
        ("card", "e2"), ("device", "e1"), ("device", "e2"), ("iban", "e1"), ("ip", "e2"),
    ]  # fmt: skip
    alerts = [{"event_id": "a1", "customer_email": "x@y.example", "customer_phone": None}]
    assert [k for k, _ in refs("alert", alerts)] == [EntityKind.EMAIL]


def test_an_entry_keeps_the_most_recent_accounts_and_forgets_past_the_lookback() -> None:
    entry = EntityEntry("device")
    for i in range(MAX_ACCOUNTS + 10):
        entry.see(f"acct-{i}", i * 1000)
    assert len(entry.accounts) == MAX_ACCOUNTS and entry.overflow == 10
    assert "acct-0" not in entry.accounts and f"acct-{MAX_ACCOUNTS + 9}" in entry.accounts
    entry.expire(now_ms=100 * H, lookback_ms=72 * H)
    assert entry.accounts == {}


def test_links_are_the_other_accounts_within_the_lookback_with_their_decisions() -> None:
    entry = EntityEntry("device")
    entry.see("victim", 10 * H)
    entry.see("mule-1", 9 * H)
    entry.see("mule-1", 9 * H + 5)
    entry.see("old", 1 * H)
    entry.decide("mule-1", "CONFIRMED_FRAUD", 9 * H + 60_000)
    links = entry.links("victim", now_ms=10 * H, lookback_ms=6 * H)
    assert [(link.account_id, link.first_ms, link.last_ms) for link in links] == [
        ("mule-1", 9 * H, 9 * H + 5)
    ]
    assert links[0].decision is not None and links[0].decision.decision == "CONFIRMED_FRAUD"
    assert entry.links("victim", now_ms=10 * H, lookback_ms=20 * H)[-1].account_id == "old"


def test_a_false_positive_on_one_account_clears_no_other() -> None:
    entry = EntityEntry("iban")
    entry.see("a", 1)
    entry.see("b", 2)
    entry.decide("a", "CONFIRMED_FRAUD", 10)
    entry.decide("b", "FALSE_POSITIVE", 20)
    assert entry.decisions["a"].decision == "CONFIRMED_FRAUD"
    entry.decide("a", "FALSE_POSITIVE", 5)  # an older decision does not overrule a newer
    assert entry.decisions["a"].decision == "CONFIRMED_FRAUD"
    entry.decide("a", "ESCALATED", 30)  # not a decision the index keeps
    assert entry.decisions["a"].decision == "CONFIRMED_FRAUD"


def test_a_decision_outlives_the_lookback_but_not_its_retention() -> None:
    entry = EntityEntry("device")
    entry.see("ring", 0)
    entry.decide("ring", "CONFIRMED_FRAUD", 0)
    entry.expire(now_ms=30 * 24 * H, lookback_ms=72 * H)
    assert "ring" not in entry.accounts and "ring" in entry.decisions
    assert [link.account_id for link in entry.links("next", 30 * 24 * H, 72 * H)] == ["ring"]
    entry.expire(now_ms=(DECISION_RETAIN_D + 1) * 24 * H, lookback_ms=72 * H)
    assert entry.empty()


def test_decisions_are_bounded_false_positives_first() -> None:
    entry = EntityEntry("device")
    entry.decide("fraud", "CONFIRMED_FRAUD", 0)
    for i in range(MAX_ACCOUNTS):
        entry.decide(f"fp-{i}", "FALSE_POSITIVE", 100 + i)
    assert len(entry.decisions) == MAX_ACCOUNTS and "fraud" in entry.decisions


def test_an_entry_round_trips_and_never_nears_the_record_limit() -> None:
    entry = EntityEntry("card")
    entry.see("a", 5)
    entry.decide("a", "CONFIRMED_FRAUD", 6)
    entry.see("b", 7)
    again = EntityEntry.from_json(json.loads(json.dumps(entry.to_json())))
    assert again == entry
    assert max_bytes() < 64 * 1024  # the changelog takes 1 MiB


def test_a_replayed_sighting_changes_nothing() -> None:
    """After a kill -9 the sightings of uncommitted input are sent again."""
    entry = EntityEntry("device")
    for at in (5, 9, 7):
        entry.see("a", at)
    before = entry.to_json()
    for at in (5, 9, 7):
        entry.see("a", at)
    assert entry.to_json() == before
