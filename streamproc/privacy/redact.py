"""Redaction of a case before inference, and the brief PII policies after it.

Every PII field (marked in the Avro schemas) and every PII found in free text becomes
a placeholder such as `<PAN_1>` or `<PERSON_2>`, stable within the case: the same
value, however spelt, is always the same placeholder, so a model can still reason
that "the same card was used twice". The Vault keeps placeholder → original and never
leaves the worker; the model and the audit topic see placeholders only.

Device ids are not personal data, but they link accounts (network/entities): the model
sees each as `<DEVICE_n>` too, wherever it stands (its field, a free text, a finding),
and the linked accounts as `<LINKED_ACCOUNT_n>`. These aliases are not redactions (they
are not counted as such); in the model's answer each becomes again what it stands for:
the device id as the model would have read it (any PII inside it a placeholder, which
the brief's policy then applies to), or the linked account's id.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from streamproc.config import BriefPII, Topics
from streamproc.contracts.schemas import EventSchema, SchemaSet
from streamproc.privacy.detect import DEFAULT_REGIONS, Entity, Known, digits, find_all, parts

PLACEHOLDER = re.compile(r"<(PAN|IBAN|EMAIL|PHONE|PERSON|IP)_(\d+)>")
ALIAS = re.compile(r"<(DEVICE|LINKED_ACCOUNT)_(\d+)>")
# What an alias stands for, and how aliases are numbered: a new value whenever that
# changes, so no draft cached under the old numbering is read under the new one (it is
# part of the LLM cache's key). a2: one <LINKED_ACCOUNT_n> per account, mapped back.
ALIAS_SCHEME = "a2"
DEVICE_FIELDS = ("device_id",)  # the fields of the input kinds that name a device
Record = dict[str, Any]


def normal_form(entity: Entity, value: str) -> str:
    """The identity of a value, so that spellings of one value share a placeholder."""
    if entity is Entity.PAN:
        return digits(value)
    if entity is Entity.IBAN:
        return "".join(ch for ch in value if ch.isalnum()).upper()
    if entity is Entity.EMAIL:
        return value.strip().lower()
    if entity is Entity.PHONE:
        try:
            parsed = phonenumbers.parse(value, "US" if not value.strip().startswith("+") else None)
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
        except phonenumbers.NumberParseException:
            return digits(value)
    if entity is Entity.IP:
        try:
            return ipaddress.ip_address(value.strip()).compressed
        except ValueError:
            return value.strip().lower()
    return " ".join(sorted(parts(value)))  # a name in any order, case or accents


@dataclass
class Vault:
    """Placeholders of one case. Never serialised to Kafka, logs or metrics."""

    _by_key: dict[tuple[Entity, str], str] = field(default_factory=dict)
    originals: dict[str, str] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    known: Known | None = None  # the case's PII field values, to find them in other text
    regions: tuple[str, ...] = ()  # the case's countries, for phone numbers
    # Texts already redacted with this vault's known values and regions: a case repeats
    # its merchants, currencies and device ids on every record.
    redacted: dict[str, str] = field(default_factory=dict, repr=False)
    aliases: dict[str, str] = field(default_factory=dict)  # <DEVICE_n> → what it stands for
    _hide: re.Pattern[str] | None = field(default=None, repr=False)
    _whole: dict[str, str] = field(default_factory=dict, repr=False)
    _folded: dict[str, str] = field(default_factory=dict, repr=False)
    _alias_of: dict[str, str] = field(default_factory=dict, repr=False)

    def alias(self, kind: str, shown: str) -> str:
        """The alias of `shown` (a device id as redacted, or an account id)."""
        key = f"{kind}\0{shown}"
        found = self._alias_of.get(key)
        if found is None:
            n = sum(1 for a in self.aliases if a.startswith(f"<{kind}_")) + 1
            found = self._alias_of[key] = f"<{kind}_{n}>"
            self.aliases[found] = shown
            self._hide = None
        return found

    def hide_ids(self, text: str) -> str:
        """`text` (redacted) with each device id and linked account id of the case as its
        alias. A text that is exactly an id (a record's device field) always; inside a
        longer text, a distinctive id only (`distinctive`: a device called "unknown" or
        "1" must not turn "an unknown country" or "1 alert" into an alias), whole (not
        inside a longer run of letters and digits; "_" and "-" separate), in any case,
        the longest first, so an id that holds another is one alias. Two ids that differ
        only in case keep their own aliases where written as the case has them."""
        if not text or not self.aliases:
            return text
        if self._hide is None:
            self._whole = {v: a for a, v in self.aliases.items()}
            inside = sorted((v for v in self._whole if distinctive(v)), key=len, reverse=True)
            self._folded = {}
            for v in inside:
                self._folded.setdefault(v.casefold(), self._whole[v])
            alternatives = "|".join(re.escape(v) for v in inside)
            self._hide = re.compile(
                rf"(?<![^\W_])(?:{alternatives})(?![^\W_])" if inside else r"(?!x)x",
                re.IGNORECASE,
            )
        whole = self._whole.get(text)
        if whole is not None:
            return whole
        return self._hide.sub(self._alias_for, text)

    def _alias_for(self, m: re.Match[str]) -> str:
        found = m.group(0)
        # A spelling that matched only through re's per-letter case rules (a dotless ı
        # for an i) has no alias of its own: it is not the case's id, and stays as written.
        return self._whole.get(found) or self._folded.get(found.casefold(), found)

    def placeholder(self, entity: Entity, value: str) -> str:
        key = (entity, normal_form(entity, value))
        found = self._by_key.get(key)
        if found is None:
            n = sum(1 for e in self.entities.values() if e is entity) + 1
            found = f"<{entity.value}_{n}>"
            self._by_key[key] = found
            self.originals[found] = value
            self.entities[found] = entity
        return found

    def counts(self) -> dict[str, int]:
        """Distinct redacted entities by type, for the brief and /metrics."""
        return dict(Counter(e.value for e in self.entities.values()))


class Redactor:
    """Redacts the records of a case with the schemas' field annotations."""

    def __init__(self, schemas: Mapping[str, EventSchema], regions: Iterable[str] = ()) -> None:
        self.schemas = schemas  # kind ("transaction", "signal", "alert") → schema
        self.regions = tuple(dict.fromkeys([*regions, *DEFAULT_REGIONS]))

    @classmethod
    def for_inputs(cls, schemas: SchemaSet, topics: Topics | None = None) -> Redactor:
        """The redactor for the three input kinds, with the input topics' schemas."""
        t = topics or Topics()
        return cls(
            {
                "transaction": schemas.for_topic(t.transactions),
                "signal": schemas.for_topic(t.device_signals),
                "alert": schemas.for_topic(t.alerts),
            }
        )

    def redact(
        self, kinds: Mapping[str, Iterable[Record]], linked: Iterable[str] = ()
    ) -> tuple[dict[str, list[Record]], Vault]:
        """Redacted copies of the records, by kind, and the case's vault. `linked`: the
        ids of the accounts the case links to, in the order the brief lists them: they
        are aliases wherever the records name them, as devices are."""
        vault = Vault()
        known: dict[str, Entity] = {}
        for kind, records in kinds.items():
            for record in records:
                for name, etype in self.schemas[kind].pii_fields.items():
                    value = record.get(name)
                    if isinstance(value, str) and value.strip():
                        known[value] = Entity(etype)
                        vault.placeholder(Entity(etype), value)
        vault.regions, vault.known = self._regions(kinds), Known(known)
        devices = {
            self.redact_text(value, vault, ids=True)
            for records in kinds.values()
            for record in records
            for value in (record.get(name) for name in DEVICE_FIELDS)
            if isinstance(value, str) and value.strip()
        }
        for shown in sorted(devices):  # sorted: the same case, the same aliases
            if not PLACEHOLDER.fullmatch(shown):  # an id that is all PII is hidden already
                vault.alias("DEVICE", shown)
        for account in linked:  # after the devices: a device id may hold an account id
            vault.alias("LINKED_ACCOUNT", account)
        vault.redacted.clear()
        out: dict[str, list[Record]] = {}
        for kind, records in kinds.items():
            schema = self.schemas[kind]
            out[kind] = [self._record(r, schema, vault) for r in records]
        return out, vault

    def known_values(self, kinds: Mapping[str, Iterable[Record]]) -> tuple[Known, tuple[str, ...]]:
        """The case's PII field values, as the detector knows them, and its regions."""
        known: dict[str, Entity] = {}
        for kind, records in kinds.items():
            for record in records:
                for name, etype in self.schemas[kind].pii_fields.items():
                    value = record.get(name)
                    if isinstance(value, str) and value.strip():
                        known[value] = Entity(etype)
        return Known(known), self._regions(kinds)

    def redact_text(self, text: str, vault: Vault, ids: bool = False) -> str:
        """Replace every PII span of `text` by its placeholder: any text of the case
        (a record's field, or a finding written from the records), after `redact`.
        `ids`: the text is an identifier (privacy/detect.find_phones)."""
        done = vault.redacted.get(text)
        if done is not None:
            return done
        original = text
        spans = find_all(text, vault.known, vault.regions or self.regions, ids)
        for span in reversed(spans):
            text = text[: span.start] + vault.placeholder(span.entity, span.text) + text[span.end :]
        text = vault.hide_ids(text)
        vault.redacted[original] = text
        return text

    def _record(self, record: Record, schema: EventSchema, vault: Vault) -> Record:
        out = dict(record)
        for name, etype in schema.pii_fields.items():
            value = out.get(name)
            if isinstance(value, str) and value.strip():
                out[name] = vault.placeholder(Entity(etype), value)
        for names, ids in ((schema.free_text_fields, False), (schema.id_text_fields, True)):
            for name in names:
                value = out.get(name)
                if isinstance(value, str) and value:
                    out[name] = self.redact_text(value, vault, ids)
                elif isinstance(value, list):
                    out[name] = [
                        self.redact_text(v, vault, ids) if isinstance(v, str) else v for v in value
                    ]
        return out

    def _regions(self, kinds: Mapping[str, Iterable[Record]]) -> tuple[str, ...]:
        countries = {
            r.get(f)
            for rs in kinds.values()
            for r in rs
            for f in ("merchant_country", "geo_country")
        }
        return tuple(dict.fromkeys([*(c for c in countries if isinstance(c, str)), *self.regions]))


def distinctive(value: str) -> bool:
    """An id unlikely to be a word or a number of the text around it: six characters
    or more, not letters alone, and not digits alone unless ten or more (an IMEI, not an
    amount)."""
    return len(value) >= 6 and not value.isalpha() and (not value.isdigit() or len(value) >= 10)


def unalias(text: str, vault: Vault) -> tuple[str, int]:
    """The model's aliases as the case has them (a device id as redacted, an account
    id); one the case did not hand out becomes [removed]. Returns the text and how many
    were not of this case."""
    invented = 0

    def back(m: re.Match[str]) -> str:
        nonlocal invented
        shown = vault.aliases.get(m.group(0))
        if shown is None:
            invented += 1
            return "[removed]"
        return shown

    return ALIAS.sub(back, text), invented


def mask(entity: Entity, value: str) -> str:
    """Partly hidden form for `BRIEF_PII=masked`."""
    if entity is Entity.PAN:
        return f"•••• {digits(value)[-4:]}"
    if entity is Entity.IBAN:
        compact = normal_form(entity, value)
        return f"{compact[:2]}•• •••• {compact[-4:]}"
    if entity is Entity.EMAIL:
        local, _, domain = value.strip().partition("@")
        return f"{local[:1]}•••@{domain}"
    if entity is Entity.PHONE:
        number = normal_form(entity, value)
        return f"{number[:3]}•••••{number[-2:]}"
    if entity is Entity.IP:
        ip = normal_form(entity, value)
        return ".".join(ip.split(".")[:2]) + ".x.x" if "." in ip else ip.split(":")[0] + ":…"
    return " ".join(f"{w[0]}." for w in value.split() if w)


def apply_policy(
    text: str, vault: Vault, policy: BriefPII, aliases: bool = True
) -> tuple[str, int]:
    """Placeholders in model output → masked, restored or kept; invented ones removed.
    Aliases first (unless `aliases` is False: the caller mapped them back already, and
    an id spelled like an alias must not be mapped twice): a device id may hold a
    placeholder.

    Returns the text and how many placeholders were not of this case (invented).
    """
    text, invented = unalias(text, vault) if aliases else (text, 0)

    def swap(m: re.Match[str]) -> str:
        nonlocal invented
        original = vault.originals.get(m.group(0))
        if original is None:
            invented += 1
            return "[removed]"
        if policy is BriefPII.RESTORED:
            return original
        if policy is BriefPII.MASKED:
            return mask(vault.entities[m.group(0)], original)
        return m.group(0)

    return PLACEHOLDER.sub(swap, text), invented
