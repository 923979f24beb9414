"""The linkable identifiers of input events, as keyed hashes.

An entity is a value that links two accounts when both are seen with it: a device id,
a counterparty IBAN, a card number, an IP address, or an email or phone in an alert's
customer fields. Its key, wherever it leaves the worker (internal topics, the index's
state), is a keyed hash (a MAC) over its kind and its normal form, under the ENTITY_KEY
secret (keyed BLAKE2b): never the raw value, and not a plain hash either, which anyone could compute
for a guessed card number or phone. The normal form is the redactor's (`normal_form`),
so spellings of one value are one entity, as they are one placeholder.

What does not link: an empty value, and an IP address that is not globally routable
(private, loopback, carrier-grade NAT): thousands of unrelated customers share those.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any

from streamproc.errors import ConfigError
from streamproc.privacy.detect import Entity
from streamproc.privacy.redact import normal_form

MIN_KEY_BYTES = 16
KEY_HEX_CHARS = 32  # 128 bits of the MAC: collisions are not a concern at any volume


class EntityKind(StrEnum):
    DEVICE = "device"
    IBAN = "iban"
    CARD = "card"
    IP = "ip"
    EMAIL = "email"
    PHONE = "phone"


_PII = {
    EntityKind.IBAN: Entity.IBAN,
    EntityKind.CARD: Entity.PAN,
    EntityKind.IP: Entity.IP,
    EntityKind.EMAIL: Entity.EMAIL,
    EntityKind.PHONE: Entity.PHONE,
}

# The fields of each input kind that carry a linkable identifier.
FIELDS: Mapping[str, tuple[tuple[str, EntityKind], ...]] = {
    "transaction": (
        ("device_id", EntityKind.DEVICE),
        ("counterparty_iban", EntityKind.IBAN),
        ("card_pan", EntityKind.CARD),
        ("ip_address", EntityKind.IP),
    ),
    "signal": (("device_id", EntityKind.DEVICE), ("ip_address", EntityKind.IP)),
    "alert": (("customer_email", EntityKind.EMAIL), ("customer_phone", EntityKind.PHONE)),
}


def linkable(kind: str, record: Mapping[str, Any]) -> Iterator[tuple[EntityKind, str]]:
    """The (kind, raw value) pairs an input record of `kind` ("transaction", "signal",
    "alert") carries that may link it to another account. An IBAN only as a beneficiary
    (the counterparty of a DEBIT): an employer paying many accounts is no ring."""
    for name, entity_kind in FIELDS[kind]:
        value = record.get(name)
        if not isinstance(value, str):
            continue
        if entity_kind is EntityKind.IBAN and record.get("direction") != "DEBIT":
            continue
        yield entity_kind, value


def normalise(kind: EntityKind, value: str) -> str | None:
    """The entity's identity, or None when the value links nothing."""
    value = value.strip()
    if not value:
        return None
    if kind is EntityKind.DEVICE:
        return value
    if kind is EntityKind.IP:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return None
        return address.compressed if address.is_global else None
    normal = normal_form(_PII[kind], value)
    return normal or None


class EntityHasher:
    """Keyed hashes of entities under one secret, the same on every worker."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                f"STREAMPROC_ENTITY_KEY must be at least {MIN_KEY_BYTES} bytes "
                "(every worker of the group needs the same one)"
            )
        # Keyed BLAKE2b (RFC 7693's MAC mode, in hashlib): a MAC like HMAC-SHA256 at a
        # third of its cost, which a worker pays for each new value it sees. Its key is
        # at most 64 bytes: a longer secret is hashed down first.
        self._key = key if len(key) <= 64 else hashlib.sha256(key).digest()

    def key_of(self, kind: EntityKind, value: str) -> str | None:
        normal = normalise(kind, value)
        if normal is None:
            return None
        return self.keyed(kind.value, normal)

    def keyed(self, tag: str, value: str) -> str:
        digest = hashlib.blake2b(
            f"{tag}\x00{value}".encode(), key=self._key, digest_size=KEY_HEX_CHARS // 2
        )
        return digest.hexdigest()
