"""PII detectors for free text: each returns spans (start, end, type, matched text).

Card numbers count only when Luhn-valid, IBANs only with a valid checksum, IPs only
when `ipaddress` parses them, phone numbers only when `phonenumbers` says they are
valid for some region of the case: a detector prefers missing junk to redacting ids.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn


class Entity(StrEnum):
    PAN = "PAN"
    IBAN = "IBAN"
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    PERSON = "PERSON"
    IP = "IP"


# Longer and more specific spans win overlaps; on equal length, this order decides.
PRIORITY = (Entity.PAN, Entity.IBAN, Entity.EMAIL, Entity.IP, Entity.PHONE, Entity.PERSON)
DEFAULT_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "RO")
MIN_PHONE_DIGITS = 7

_PAN = re.compile(r"(?<![\dA-Za-z])(?:\d[ \-.]?){12,18}\d(?![\dA-Za-z])")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,30}\b")
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    entity: Entity
    text: str


def digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def find_pans(text: str) -> Iterator[Span]:
    for m in _PAN.finditer(text):
        number = digits(m.group())
        if 13 <= len(number) <= 19 and luhn.is_valid(number):
            yield Span(m.start(), m.end(), Entity.PAN, m.group())


def find_ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        if stdnum_iban.is_valid(m.group()):
            yield Span(m.start(), m.end(), Entity.IBAN, m.group())


def find_emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        yield Span(m.start(), m.end(), Entity.EMAIL, m.group())


def find_ips(text: str) -> Iterator[Span]:
    for pattern in (_IPV4, _IPV6):
        for m in pattern.finditer(text):
            try:
                ipaddress.ip_address(m.group())
            except ValueError:
                continue
            yield Span(m.start(), m.end(), Entity.IP, m.group())


def find_phones(text: str, regions: Iterable[str]) -> Iterator[Span]:
    if sum(ch.isdigit() for ch in text) < MIN_PHONE_DIGITS:
        return  # the matcher is costly per region; most free text has no number at all
    seen: set[tuple[int, int]] = set()
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(
            text, region, leniency=phonenumbers.Leniency.VALID
        ):
            if (m.start, m.end) not in seen:
                seen.add((m.start, m.end))
                yield Span(m.start, m.end, Entity.PHONE, m.raw_string)


def find_known(text: str, known: dict[str, Entity]) -> Iterator[Span]:
    """Values from the case's PII fields (names above all), case-insensitive, any spacing."""
    for value, entity in known.items():
        words = value.split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            yield Span(m.start(), m.end(), entity, m.group())


def find_all(text: str, known: dict[str, Entity], regions: Iterable[str]) -> list[Span]:
    """Non-overlapping spans, longest first, then by PRIORITY, in text order."""
    spans = [
        *find_pans(text),
        *find_ibans(text),
        *find_emails(text),
        *find_ips(text),
        *find_phones(text, regions),
        *find_known(text, known),
    ]
    spans.sort(key=lambda s: (-(s.end - s.start), PRIORITY.index(s.entity), s.start))
    taken: list[Span] = []
    for span in spans:
        if all(span.end <= t.start or span.start >= t.end for t in taken):
            taken.append(span)
    return sorted(taken, key=lambda s: s.start)
