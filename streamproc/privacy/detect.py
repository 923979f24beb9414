"""PII detectors for free text: each returns spans (start, end, type, matched text).

Card numbers count only when Luhn-valid, IBANs only with a valid checksum, IPs only
when `ipaddress` parses them, phone numbers only when `phonenumbers` says they are
valid for some region of the case. Where a value sits does not matter: with any
separator (space, dash, dot, underscore, slash) or none, glued to letters, digits or
punctuation. A run of characters that fails validation as a whole is searched for
shorter valid candidates inside it, so a word or a reference number next to a card
number cannot hide it. Values from the case's own PII fields are found whatever
their case, accents, spacing and order of name parts. In doubt, redact: a redacted
reference number in a memo costs the analyst little, a leaked card number costs a
breach.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
MAX_PHONE_DIGITS = 15  # E.164
SHORT_PHONE_DIGITS = 5  # the shortest number the matcher is asked about (see below)
PHONE_RUN_MIN_DIGITS = 10  # a bare digit run without +, 0 or ( counts from this length
PAN_LENGTHS = range(19, 12, -1)  # longest first
IBAN_MIN, IBAN_MAX = 15, 34
MAX_NAME_PARTS = 4  # orders of parts tried for a glued full name: at most 4! = 24
GLUED_MIN = 8  # a known value is searched glued to other letters only from this length

# Separators that may stand between the digits of one number: whitespace, dashes of
# every kind, dots, underscores, slashes; up to MAX_GAP of them in a row ("4539 - 1488").
DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
SEPARATORS = " \t\n\r\u00a0\u2007\u2009\u202f-._/" + DASHES
MAX_GAP = 3
_SEP = "[\\s\\-._/" + DASHES + "]"
# Digits with at most MAX_GAP separators between them: the runs card numbers hide in.
_DIGIT_RUN = re.compile(f"[0-9](?:{_SEP}{{0,{MAX_GAP}}}[0-9])*")
# Phone numbers: a leading + and parentheses are part of the number's spelling.
_PHONE_RUN = re.compile(f"\\+?\\(?[0-9](?:(?:{_SEP}|[()]){{0,{MAX_GAP}}}[0-9])*")
# Where phonenumbers' matcher can find a number: digits with gaps of up to 4 characters
# of its separator set (punctuation, spaces, brackets, `x`, `ー`) or an extension's mark
# (`ext.`, `X12`: the matcher counts those digits too); a superset of its candidates.
_PHONE_CANDIDATE = re.compile(
    r"[0-9](?:(?:[^\w]|[x_ー]|ext|extn|extension){0,5}[0-9])*", re.IGNORECASE
)
# An ISO-8601 instant in UTC, as our own texts write times, standing alone (after a space
# or an opening bracket, before a space or a closing mark). The matcher's candidates stop
# at its letters (T, Z), and at its leniency a number touching a letter is refused, so no
# number it finds lies in one: the pre-filter reads the text with such instants blanked.
_ISO_INSTANT = re.compile(
    r"(?<![^\s(\[,;:'\"])"
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?Z"
    r"(?![^\s)\],;:.'\"])"
)
# Short runs that are no phone number as our texts write them: an amount (1,234.56 or
# 1234.56; its currency is outside the run) and a risk score (40/100). Neither starts with
# a 0 unless it is 0 itself: "0300.00" and "030/100" are German numbers to the matcher.
_INT = r"(?:0|[1-9][0-9]*)"
_AMOUNT = re.compile(
    rf"(?:0|[1-9][0-9]{{0,2}})(?:,[0-9]{{3}})*\.[0-9]{{2}}|{_INT}\.[0-9]{{2}}"
    r"|(?:0|[1-9][0-9]{0,2})/100"
)
_WORD = re.compile(r"[^\W_]+")
_IBAN_START = re.compile(r"(?=([A-Za-z]{2}[0-9]{2}))")
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
    return "".join(ch for ch in text if "0" <= ch <= "9")


def ascii_digits(text: str) -> str:
    """Other scripts' decimal digits (fullwidth ４, Arabic-Indic ٤, ...) as 0-9, one
    character for one, so a span found in the copy is the same span in the text."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch for ch in text)


def fold(text: str) -> str:
    """Case folded, accents stripped: `Chloé` and `CHLOE` fold alike."""
    return _Folded(text).text


_ASCII_ALNUM = re.compile(r"[a-z0-9]")


class _Folded:
    """`text` case folded with accents stripped, and for each folded character the index
    of the original character it came from (folding can change lengths: ß → ss)."""

    def __init__(self, original: str, keep: str = "all") -> None:
        self.where: Sequence[int]
        if original.isascii():  # most text: folding is lower-casing, one char for one
            low = original.lower()
            if keep == "all":
                self.text, self.where = low, range(len(low))
            else:
                self.where = [m.start() for m in _ASCII_ALNUM.finditer(low)]
                self.text = "".join(low[i] for i in self.where)
            return
        chars: list[str] = []
        where: list[int] = []
        for i, ch in enumerate(original):
            for f in unicodedata.normalize("NFKD", ch).casefold():
                if unicodedata.combining(f):
                    continue
                if keep == "alnum" and not f.isalnum():
                    continue
                chars.append(f)
                where.append(i)
        self.text, self.where = "".join(chars), where

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span behind folded characters [start, end)."""
        return self.where[start], self.where[end - 1] + 1


def _positions(text: str, run: re.Match[str]) -> list[int]:
    """Indexes in `text` of the digits of a run."""
    return [i for i in range(run.start(), run.end()) if "0" <= text[i] <= "9"]


def find_pans(text: str) -> Iterator[Span]:
    """Luhn-valid numbers of 13–19 digits inside any digit run: the whole run, then
    candidates made of whole digit groups (a card next to a date or a reference), then,
    in a group of more than 19 digits, every window (a card glued to other digits).
    Overlapping valid candidates are merged, so no part of a card number is left out."""
    for run in _DIGIT_RUN.finditer(text):
        pos = _positions(text, run)
        if len(pos) < PAN_LENGTHS.stop + 1:
            continue
        number = "".join(text[i] for i in pos)
        windows = [(s, e) for s, e in _pan_candidates(pos) if luhn.is_valid(number[s:e])]
        for start, end in _merge(windows):
            a, b = pos[start], pos[end - 1] + 1
            yield Span(a, b, Entity.PAN, text[a:b])


def _pan_candidates(pos: list[int]) -> Iterator[tuple[int, int]]:
    """(start, end) digit windows worth a Luhn check, from the digits' text positions."""
    edges = [0] + [k for k in range(1, len(pos)) if pos[k] != pos[k - 1] + 1] + [len(pos)]
    for i, start in enumerate(edges):
        for end in edges[i + 1 :]:
            if end - start > PAN_LENGTHS.start:
                break  # edges only grow: every later candidate is longer still
            if end - start in PAN_LENGTHS:
                yield start, end
    for start, end in itertools.pairwise(edges):
        if end - start > PAN_LENGTHS.start:
            for n in PAN_LENGTHS:
                for s in range(start, end - n + 1):
                    yield s, s + n


def _merge(windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def find_ibans(text: str) -> Iterator[Span]:
    """Checksum-valid IBANs starting at any country code + check digits, with separators
    anywhere and any case; from each start the longest valid candidate wins."""
    taken_until = -1
    for m in _IBAN_START.finditer(text):
        start = m.start()
        if start < taken_until:
            continue
        chars: list[int] = []  # indexes of the candidate's alphanumeric characters
        gap = 0  # separators in a row: at most MAX_GAP between characters
        for i in range(start, len(text)):
            ch = text[i]
            if ch.isascii() and ch.isalnum():
                chars.append(i)
                gap = 0
            elif ch in SEPARATORS and gap < MAX_GAP:
                gap += 1
            else:
                break
            if len(chars) == IBAN_MAX:
                break
        compact = "".join(text[j] for j in chars).upper()
        for n in range(len(compact), IBAN_MIN - 1, -1):
            if stdnum_iban.is_valid(compact[:n]):
                end = chars[n - 1] + 1
                taken_until = end
                yield Span(start, end, Entity.IBAN, text[start:end])
                break


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


def find_phones(text: str, regions: Iterable[str], ids: bool = False) -> Iterator[Span]:
    """Numbers valid for a region of the case, in international or national format:
    `phonenumbers`' matcher for numbers in prose, and each digit run parsed on its own
    for numbers glued to letters or punctuation, which the matcher passes over. `ids`:
    the text is an identifier, where a number of under MIN_PHONE_DIGITS digits is a
    sequence number ("txn-030000"), not a phone."""
    if not _may_hold_phone(text, MIN_PHONE_DIGITS if ids else SHORT_PHONE_DIGITS):
        return  # the matcher is costly per region; most text holds no number that long
    regions = tuple(regions)
    seen: set[tuple[int, int]] = set()
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(
            text, region, leniency=phonenumbers.Leniency.VALID
        ):
            if (m.start, m.end) not in seen:
                seen.add((m.start, m.end))
                yield Span(m.start, m.end, Entity.PHONE, m.raw_string)
    for run in _PHONE_RUN.finditer(text):
        start, end = run.start(), run.end()
        raw = text[start:end]
        n = len(digits(raw))
        if not MIN_PHONE_DIGITS <= n <= MAX_PHONE_DIGITS:
            continue
        if n < PHONE_RUN_MIN_DIGITS and raw[0] not in "+0(":
            continue  # short runs only with a phone's own prefix: 2026-09-21 is a date
        if any(s <= start and end <= e for s, e in seen):
            continue
        if _valid_phone(raw, regions):
            seen.add((start, end))
            yield Span(start, end, Entity.PHONE, raw)


def _may_hold_phone(text: str, least: int = SHORT_PHONE_DIGITS) -> bool:
    """Whether phonenumbers' matcher may find a number in `text`. It runs on a text of at
    least MIN_PHONE_DIGITS digits (the rule before this filter), unless every place it
    could find one is too short: a run of under MIN_PHONE_DIGITS digits, or of under
    that and SHORT_PHONE_DIGITS and more written as an amount or a score. The
    matcher yields numbers shorter than MIN_PHONE_DIGITS too ("069 734", a Frankfurt
    number), so runs of SHORT_PHONE_DIGITS are kept for it, and a text of `least` digits
    in all is looked at ("Tel 030000", six digits, is a Berlin number)."""
    if sum("0" <= ch <= "9" for ch in text) < least:
        return False
    if "T" in text:
        text = _ISO_INSTANT.sub(lambda m: "T" * len(m.group()), text)
    for m in _PHONE_CANDIDATE.finditer(text):
        n = sum("0" <= ch <= "9" for ch in m.group())
        if n >= MIN_PHONE_DIGITS:
            return True
        if n >= SHORT_PHONE_DIGITS and not _AMOUNT.fullmatch(m.group().strip()):
            return True
    return False


def _valid_phone(raw: str, regions: Iterable[str]) -> bool:
    for region in regions:
        try:
            number = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


class Known:
    """The values of a case's PII fields, prepared once per case for every free-text
    field: compared folded (case, accents) and squeezed (spacing, separators), a
    name's parts in any order and on their own."""

    def __init__(self, values: Mapping[str, Entity] | None = None) -> None:
        self.needles: dict[str, Entity] = {}
        self.parts: dict[str, Entity] = {}
        for value, entity in (values or {}).items():
            for needle in _needles(value, entity):
                self.needles.setdefault(needle, entity)
            if entity is Entity.PERSON:
                for part in _name_parts(value):
                    self.parts.setdefault(part, entity)

    def find(self, text: str) -> Iterator[Span]:
        """Where the known values recur in `text`."""
        if not self.needles:
            return
        squeezed = _Folded(text, keep="alnum")
        for needle, entity in self.needles.items():
            if needle not in squeezed.text:  # a substring test per value; most texts have none
                continue
            glued = len(needle) >= GLUED_MIN
            for m in re.finditer(re.escape(needle), squeezed.text):
                start, end = squeezed.span(m.start(), m.end())
                if glued or _bounded(text, start, end):
                    yield Span(start, end, entity, text[start:end])
        if self.parts:
            words = _Folded(text)
            for m in _WORD.finditer(words.text):
                if m.group() in self.parts:
                    start, end = words.span(m.start(), m.end())
                    yield Span(start, end, self.parts[m.group()], text[start:end])


def parts(value: str) -> list[str]:
    """A value's words, folded: `Dubois, Chloé` → [dubois, chloe]."""
    return [p for p in re.split(r"[^\w]+|_", fold(value)) if p]


def _needles(value: str, entity: Entity) -> set[str]:
    """The squeezed, folded spellings of a known value to look for."""
    parts_ = parts(value)
    if not parts_:
        return set()
    if entity is Entity.PERSON and 1 < len(parts_) <= MAX_NAME_PARTS:
        return {"".join(order) for order in itertools.permutations(parts_)}
    needles = {"".join(parts_)}
    if entity is Entity.PHONE:
        needles |= _phone_needles(value)
    return needles


def _phone_needles(value: str) -> set[str]:
    """A known phone number's national significant number: how it recurs in any format."""
    try:
        number = phonenumbers.parse(value, None if value.strip().startswith("+") else "US")
    except phonenumbers.NumberParseException:
        return set()
    national = phonenumbers.national_significant_number(number)
    return {national} if len(national) >= MIN_PHONE_DIGITS else set()


def _name_parts(value: str) -> list[str]:
    """Parts of a name that name the person on their own (initials do not)."""
    return [p for p in parts(value) if len(p) >= 2]


def _bounded(text: str, start: int, end: int) -> bool:
    """No letter or digit glued on either side: a short value inside a longer word is
    another word (`lina` in `carolina`)."""
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    return not before.isalnum() and not after.isalnum()


def find_all(
    text: str, known: Known | None, regions: Iterable[str], ids: bool = False
) -> list[Span]:
    """Non-overlapping spans, longest first, then by PRIORITY, in text order. Spans that
    overlap without one holding the other are joined, so no part of either is left.
    `ids`: the text is an identifier (find_phones says what that changes)."""
    ascii_text = ascii_digits(text)  # same length: spans hold for both
    spans = [
        *find_pans(ascii_text),
        *find_ibans(ascii_text),
        *find_emails(text),
        *find_ips(ascii_text),
        *find_phones(ascii_text, regions, ids),
        *(known.find(text) if known is not None else ()),
    ]
    spans = [Span(s.start, s.end, s.entity, text[s.start : s.end]) for s in spans]
    spans.sort(key=lambda s: (-(s.end - s.start), PRIORITY.index(s.entity), s.start))
    taken: list[Span] = []
    for span in spans:
        clash = [t for t in taken if span.start < t.end and t.start < span.end]
        if not clash:
            taken.append(span)
            continue
        if all(t.start <= span.start and span.end <= t.end for t in clash):
            continue  # inside a longer span already taken
        for t in clash:
            taken.remove(t)
        start = min(span.start, *(t.start for t in clash))
        end = max(span.end, *(t.end for t in clash))
        owner = min([span, *clash], key=lambda s: (-(s.end - s.start), PRIORITY.index(s.entity)))
        taken.append(Span(start, end, owner.entity, text[start:end]))
    return sorted(taken, key=lambda s: s.start)
