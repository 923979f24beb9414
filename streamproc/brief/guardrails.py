"""Guardrails: what a model's draft may change in a brief, and what it may not.

The model cannot talk the risk down or weaken the brief:
- level and score never go below the deterministic floor, and the floor's reason
  codes, actions and key facts stay (the model's facts come first; it adds to what
  the brief shows and cites, never drops any of it);
- CLOSE_AS_FALSE_POSITIVE is never published at MEDIUM or above;
- a reason code the model adds stands only when a kept key fact names it and cites
  events of the kind that can show it (a mule pattern needs a credit, a new device a
  device signal);
- a draft that argued a level below the floor, or suggested closing as a false
  positive a case the floor rates MEDIUM or above, is overruled: the analyst reads the
  deterministic summary and facts, marked as such, never prose arguing against the
  published level.
Evidence ids that are not events of the case are dropped, and a fact left without
evidence goes too. URLs, PII-shaped strings (the model only ever saw placeholders, so
any raw PII is not from the case), placeholders the case does not have, and runs of
ECHO_WORDS or more words copied from the case's free text (where injected
instructions live) are removed from every text. Texts are cut to their bounds after
parsing (the schema sent to providers carries none). The brief PII policy is applied
last. Each intervention is counted by check.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain
from typing import TypeVar

from streamproc.brief.claims import Checked, Context, Published, Scope, check_text, linked_count
from streamproc.brief.draft import FACT_MAX, BriefDraft
from streamproc.brief.fallback import SEVERE
from streamproc.brief.model import (
    SUMMARY_MAX,
    Action,
    CaseBrief,
    Generation,
    KeyFact,
    ReasonCode,
    RiskLevel,
)
from streamproc.config import BriefPII
from streamproc.domain.case import Case, Record
from streamproc.privacy.detect import DEFAULT_REGIONS, find_all
from streamproc.privacy.redact import ALIAS, PLACEHOLDER, Vault, apply_policy, unalias

# Links of any kind: web and file URLs, script and data URIs (a scheme directly
# followed by text, so prose such as "missing data: none" stays), bare www. hosts,
# and host/path forms of common TLDs.
URL = re.compile(
    r"(?i)\b(?:https?://|ftp://|file:/|www\.)\S+"
    r"|(?:javascript|vbscript|data):\S+"  # no \b: obfuscations glue them to other words
    r"|\b[a-z0-9\-]+\.(?:com|net|org|io|ru|xyz|top)/\S*"
)
REMOVED = "[removed]"
T = TypeVar("T", ReasonCode, Action)
# The bounded label set of streamproc_guardrail_violations_total{check}.
CHECKS = (
    "schema_rejected",  # an answer that broke the schema (closed enums included)
    "risk_floor",
    "reason_kept",
    "action_kept",
    "evidence_dropped",
    "fact_dropped",
    "url_removed",
    "pii_removed",
    "invented_placeholder",
    "summary_truncated",
    "fact_truncated",
    "free_text_echo",  # case free text (memo, analyst note, ...) repeated word for word
    "reason_unsupported",  # a code the model added without a fact showing it
    "weakening_action",  # CLOSE_AS_FALSE_POSITIVE at MEDIUM or above
    "narrative_overruled",  # the draft argued below the floor (level, closing), or looped
    "fact_repeated",  # a fact the draft already stated (numbering aside), or one that loops
    "claim_cut",  # a sentence with a claim the events do not support (brief/claims.py)
    "fact_vacuous",  # a fact that states nothing checkable about its events
    "prose_argued",  # prose that argued a level, score or confidence not published
    "claims_overruled",  # a draft that lost most of its content to the checker
)
CLAIM_PREFIX = "claim:"  # counts of cut claims by kind: "claim:amount", … (claims.CLAIM_KINDS)
KEPT_MIN = 0.5  # a draft keeping less of its prose than this is overruled
ECHO_WORDS = 4  # a run this long copied from the case's free text is quoted, not written
REPEAT_MAX = 3  # a run of ECHO_WORDS words this often in one text: the model is looping
NUMBERING = re.compile(r"^\s*\d+[.)]\s*")  # "3. " before a fact
WORD = re.compile(r"[^\W_]+")
QUOTE_REMOVED = "[quoted case text removed]"
# A code-like token: 6+ letters, digits and hyphens with at least one of each of a digit
# and a letter ("CANARY-4C9D6907", "X7K2P9QZ"); "invoice 2231" is words, not a code.
CODE = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[^\W\d_])[\w-]{6,}(?![\w-])")
CODE_MARK = "\x00code"  # tags code tokens among the echo grams
# Our placeholders and aliases ("<EMAIL_1>", "<DEVICE_2>") are the model's to write,
# not codes it was told to repeat.
TAG = re.compile(f"{PLACEHOLDER.pattern}|{ALIAS.pattern}")
_PARTIAL_TAG = re.compile(r"<[A-Z_]*\d*$")  # a tag cut by a length limit


def echo_grams(texts: Iterable[str]) -> frozenset[tuple[str, ...]]:
    """Every run of ECHO_WORDS words in the case's free-text fields (as the model saw them),
    and every code-like token in them, as (CODE_MARK, token): a reference number or
    canary an injection asks the model to repeat is one token, not a run of words."""
    grams: set[tuple[str, ...]] = set()
    for text in texts:
        words = [w.lower() for w in WORD.findall(text)]
        grams.update(tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1))
        for match in CODE.finditer(TAG.sub(" ", text)):
            token = match.group()
            grams.update((CODE_MARK, t.lower()) for t in (token, *token.split("-")) if _code(t))
    return frozenset(grams)


def _code(token: str) -> bool:
    return CODE.fullmatch(token) is not None


def strip_echo(text: str, grams: frozenset[tuple[str, ...]], counts: Counter[str]) -> str:
    """Cut runs of words and code-like tokens copied from the case's free text: attacker-
    written instructions in a memo or note must not reach the analyst through the model's
    prose, nor the marker an injection asks the model to repeat."""
    if not grams:
        return text
    words = list(WORD.finditer(text))
    lowered = [w.group().lower() for w in words]
    covered = [False] * len(words)
    for i in range(len(words) - ECHO_WORDS + 1):
        if tuple(lowered[i : i + ECHO_WORDS]) in grams:
            covered[i : i + ECHO_WORDS] = [True] * ECHO_WORDS
    spans: list[tuple[int, int]] = []
    for i, hit in enumerate(covered):
        if not hit:
            continue
        if spans and covered[i - 1]:
            spans[-1] = (spans[-1][0], words[i].end())
        else:
            spans.append((words[i].start(), words[i].end()))
    spans += [
        (m.start(), m.end())
        for m in CODE.finditer(TAG.sub(lambda t: " " * len(t.group()), text))
        if (CODE_MARK, m.group().lower()) in grams and not any(a <= m.start() < b for a, b in spans)
    ]
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + QUOTE_REMOVED + text[end:]
    counts["free_text_echo"] += len(spans)
    return text


def clean_text(
    text: str,
    vault: Vault,
    policy: BriefPII,
    counts: Counter[str],
    quoted: frozenset[tuple[str, ...]] = frozenset(),
) -> str:
    """The model's text, checked in the form it saw the case in (aliases in): raw PII
    out (it saw none, so any is invented), echoes of the case's free text out (`quoted`
    is built from that text as redacted, aliases in, so both sides match; a device id
    is the case's own data, not an echo, even where its free text names it). Then the
    aliases back to the ids they stand for, and URLs out after that: a device id is input
    an attacker may write, and one that is a URL goes like any other. Unknown
    placeholders out, policy applied to the rest. A device id is not looked at for PII
    here: it was redacted as an id when its alias was made."""
    for span in reversed(find_all(text, None, DEFAULT_REGIONS)):
        text = text[: span.start] + REMOVED + text[span.end :]
        counts["pii_removed"] += 1
    text = strip_echo(text, quoted, counts)
    text, invented = unalias(text, vault)
    text, n = URL.subn(REMOVED, text)
    counts["url_removed"] += n
    text, more = apply_policy(text, vault, policy, aliases=False)
    counts["invented_placeholder"] += invented + more
    return text


def _union(first: Iterable[T], floor: Iterable[T]) -> list[T]:
    return list(dict.fromkeys(chain(first, floor)))


def _is_credit(kind: str, r: Record) -> bool:
    return kind == "transaction" and r.get("direction") == "CREDIT"


def _is_txn(kind: str, r: Record) -> bool:
    return kind == "transaction"


def _is_signal(kind: str, r: Record) -> bool:
    return kind == "signal"


def _is_located(kind: str, r: Record) -> bool:
    return bool(r.get("merchant_country") or r.get("geo_country"))


def _is_payee(kind: str, r: Record) -> bool:
    return r.get("signal_type") == "PAYEE_ADDED" or r.get("channel") == "TRANSFER"


def _is_merchant(kind: str, r: Record) -> bool:
    return kind == "transaction" and bool(r.get("merchant_category_code"))


def _is_alert(kind: str, r: Record) -> bool:
    return kind == "alert"


def _is_card(kind: str, r: Record) -> bool:
    return kind == "transaction" and r.get("channel") in ("CARD_NOT_PRESENT", "WALLET")


# What a cited event must be for a fact to show a reason code: a code the model adds
# stands only on a kept fact that names it and cites at least one such event.
EVIDENCE_FOR: dict[ReasonCode, Callable[[str, Record], bool]] = {
    ReasonCode.CARD_TESTING: _is_card,
    ReasonCode.VELOCITY_SPIKE: _is_txn,
    ReasonCode.HIGH_AMOUNT: _is_txn,
    ReasonCode.NEW_DEVICE: _is_signal,
    ReasonCode.DEVICE_RISK: _is_signal,
    ReasonCode.GEO_MISMATCH: _is_located,
    ReasonCode.IMPOSSIBLE_TRAVEL: _is_located,
    ReasonCode.ACCOUNT_TAKEOVER: _is_signal,
    ReasonCode.MULE_ACTIVITY: _is_credit,
    ReasonCode.NEW_PAYEE: _is_payee,
    ReasonCode.MERCHANT_RISK: _is_merchant,
    ReasonCode.RULE_HIT: _is_alert,
    ReasonCode.OTHER: lambda kind, r: True,
    # Known only from the entity index, never from the case's events: the floor's alone.
    ReasonCode.LINKED_ACCOUNTS: lambda kind, r: False,
    ReasonCode.LINKED_TO_CONFIRMED_FRAUD: lambda kind, r: False,
}


def case_events(case: Case) -> dict[str, tuple[str, Record]]:
    """Event id → (kind, record) of every event of the case."""
    kinds = (("alert", case.alerts), ("transaction", case.transactions), ("signal", case.signals))
    return {r["event_id"]: (kind, r) for kind, records in kinds for r in records}


def overruled(draft: BriefDraft, floor: CaseBrief) -> bool:
    """Did the draft argue for less than the deterministic floor (a lower level, or
    closing the case as a false positive when the floor says it needs a look), or is its
    summary degenerate (a small model looping on one phrase)?"""
    return (
        draft.risk_level.rank < floor.risk_level.rank
        or _closes(draft, floor)
        or degenerate(draft.summary)
    )


def degenerate(text: str) -> bool:
    """Text that loops: some run of ECHO_WORDS words occurs REPEAT_MAX times or more."""
    words = [w.lower() for w in WORD.findall(text)]
    grams = Counter(tuple(words[i : i + ECHO_WORDS]) for i in range(len(words) - ECHO_WORDS + 1))
    return bool(grams) and max(grams.values()) >= REPEAT_MAX


def _closes(draft: BriefDraft, floor: CaseBrief) -> bool:
    return (
        Action.CLOSE_AS_FALSE_POSITIVE in draft.recommended_actions
        and floor.risk_level.rank >= RiskLevel.MEDIUM.rank
    )


def merge(
    draft: BriefDraft,
    floor: CaseBrief,
    case: Case,
    vault: Vault,
    policy: BriefPII,
    generation: Generation,
    quoted: frozenset[tuple[str, ...]] = frozenset(),
) -> tuple[CaseBrief, Counter[str]]:
    """The published brief from a validated draft and the deterministic brief (the floor).
    `quoted`: echo_grams of the case's free text as the model saw it."""
    counts: Counter[str] = Counter()
    score, level = draft.risk_score, draft.risk_level
    if score < floor.risk_score or level.rank < floor.risk_level.rank:
        counts["risk_floor"] += 1
        score, level = (
            max(score, floor.risk_score),
            max(level, floor.risk_level, key=lambda x: x.rank),
        )
    events = case_events(case)
    grounded, shown = _facts(draft, events, counts)
    reasons = _reasons(draft, floor, shown, Counter())  # what the checker reads codes against
    published = Published(level, score, draft.confidence, frozenset(reasons))
    facts, checked, argued = check_claims(draft, grounded, floor, case, events, published, counts)
    shown = {c for _, why in facts for c in why}
    facts_out: list[KeyFact] = [f for f, _ in facts]
    reasons = _reasons(draft, floor, shown, counts)
    actions = _actions(draft, floor, level, case, counts)
    lost = _lost_most(checked)
    if argued:
        counts["prose_argued"] += 1
    if lost:
        counts["claims_overruled"] += 1
    if overruled(draft, floor) or argued or lost:
        counts["narrative_overruled"] += 1
        summary = _overruled_summary(draft, floor, argued, lost)
        facts_out, confidence = list(floor.key_facts), floor.confidence
    else:
        text = checked[0].text
        summary = clean_text(text, vault, policy, counts, quoted)
        facts_out = [
            f.model_copy(update={"text": clean_text(f.text, vault, policy, counts, quoted)})
            for f in facts_out
        ]
        facts_out, confidence = facts_out + _kept_facts(facts_out, floor), draft.confidence
    if len(summary) > SUMMARY_MAX:
        counts["summary_truncated"] += 1
        summary = summary[: SUMMARY_MAX - 1] + "…"
    brief = floor.model_copy(
        update={
            "risk_level": level,
            "risk_score": score,
            "reason_codes": reasons,
            "summary": summary,
            "key_facts": facts_out,
            "recommended_actions": actions,
            "confidence": confidence,
            "generation": generation,
            "redaction": vault.counts(),
        }
    )
    return CaseBrief.model_validate(brief.model_dump()), +counts


def _facts(
    draft: BriefDraft,
    events: dict[str, tuple[str, Record]],
    counts: Counter[str],
) -> tuple[list[tuple[KeyFact, set[ReasonCode]]], set[ReasonCode]]:
    """The draft's grounded facts, once each, with the reason codes each shows (texts are
    checked and cleaned after)."""
    facts, shown, seen = [], set(), set()
    for fact in draft.key_facts:
        cited = list(dict.fromkeys(fact.evidence_event_ids))
        evidence = [e for e in cited if e in events]
        counts["evidence_dropped"] += len(cited) - len(evidence)
        if not evidence:
            counts["fact_dropped"] += 1
            continue
        text = fact.text
        key = " ".join(w.lower() for w in WORD.findall(NUMBERING.sub("", text)))
        if key in seen or degenerate(text):  # "1. X", "2. X", …: a model looping
            counts["fact_repeated"] += 1
            continue
        seen.add(key)
        codes = {
            code
            for code in fact.reason_codes
            if any(EVIDENCE_FOR[code](*events[e]) for e in evidence)
        }
        shown |= codes
        if len(text) > FACT_MAX:
            counts["fact_truncated"] += 1
            cut = text[: FACT_MAX - 1]
            text = _PARTIAL_TAG.sub("", cut) + "…"  # never half an alias or placeholder
        facts.append((KeyFact(text=text, evidence_event_ids=evidence), codes))
    return facts, shown


def check_claims(
    draft: BriefDraft,
    facts: list[tuple[KeyFact, set[ReasonCode]]],
    floor: CaseBrief,
    case: Case,
    events: dict[str, tuple[str, Record]],
    published: Published,
    counts: Counter[str],
) -> tuple[list[tuple[KeyFact, set[ReasonCode]]], list[Checked], list[str]]:
    """Every sentence of the draft's facts and summary read as claims against the events
    (brief/claims.py): false sentences cut, facts that state nothing checkable dropped.
    Returns the facts kept, what the checker made of the summary and of each fact (the
    summary first), and the arguments the prose made against the published brief."""
    case_scope = Scope(list(events.values()))
    groups = tuple(
        Scope([events[e] for e in f.evidence_event_ids if e in events])
        for f in (*(f for f, _ in facts), *floor.key_facts)
    )
    ctx = Context(
        case_scope, (case.window_start_ms, case.window_end_ms), groups, linked_count(case)
    )
    kept, checked, argued = [], [], []
    for fact, codes in facts:
        scope = Scope([events[e] for e in fact.evidence_event_ids])
        result = check_text(fact.text, scope, ctx, published, summary=False)
        checked.append(result)
        argued += result.argued
        _count_cuts(result, counts)
        if result.claims == 0:
            counts["fact_vacuous"] += 1
            continue
        if result.text:
            kept.append((fact.model_copy(update={"text": result.text}), codes))
    summary = check_text(draft.summary, case_scope, ctx, published, summary=True)
    _count_cuts(summary, counts)
    return kept, [summary, *checked], list(dict.fromkeys(argued + summary.argued))


def split_claims(counts: Counter[str]) -> tuple[Counter[str], Counter[str]]:
    """Guardrail checks (CHECKS) and cut claims by kind (claims.CLAIM_KINDS), apart."""
    checks = Counter({k: n for k, n in counts.items() if not k.startswith(CLAIM_PREFIX)})
    claims = Counter(
        {k[len(CLAIM_PREFIX) :]: n for k, n in counts.items() if k.startswith(CLAIM_PREFIX)}
    )
    return checks, claims


def _count_cuts(result: Checked, counts: Counter[str]) -> None:
    for kind, n in result.cut.items():
        counts["claim_cut"] += n
        counts[CLAIM_PREFIX + kind] += n


def _lost_most(checked: list[Checked]) -> bool:
    """Did the checker cut most of the draft's prose (its summary, or all of it)?"""
    summary = checked[0]
    total = sum(c.total_chars for c in checked)
    kept = sum(c.kept_chars for c in checked)
    return not summary.text.strip() or (total > 0 and kept < KEPT_MIN * total)


def _kept_facts(facts: list[KeyFact], floor: CaseBrief) -> list[KeyFact]:
    """The floor's facts, after the draft's own: each states a checked pattern with its
    evidence, and a draft citing the same events need not say what the floor says. By
    design, so not counted as a guardrail intervention."""
    own = {f.text for f in facts}
    return [f for f in floor.key_facts if f.text not in own]


def _reasons(
    draft: BriefDraft, floor: CaseBrief, shown: set[ReasonCode], counts: Counter[str]
) -> list[ReasonCode]:
    """The floor's codes, and the draft's own codes that a kept fact shows."""
    added = [c for c in dict.fromkeys(draft.reason_codes) if c not in floor.reason_codes]
    supported = [c for c in added if c in shown]
    counts["reason_unsupported"] += len(added) - len(supported)
    kept = [c for c in dict.fromkeys(draft.reason_codes) if c in floor.reason_codes]
    counts["reason_kept"] += len(floor.reason_codes) - len(kept)
    own = [c for c in draft.reason_codes if c in kept or c in supported]
    return _union(own, floor.reason_codes)


def _actions(
    draft: BriefDraft, floor: CaseBrief, level: RiskLevel, case: Case, counts: Counter[str]
) -> list[Action]:
    """The floor's actions and the draft's, never closing a case at MEDIUM or above, nor
    one that holds a HIGH or CRITICAL alert of the bank's own rules."""
    chosen = set(_union(draft.recommended_actions, floor.recommended_actions))
    counts["action_kept"] += len(chosen) - len(set(draft.recommended_actions))
    if Action.CLOSE_AS_FALSE_POSITIVE in chosen and (
        level.rank >= RiskLevel.MEDIUM.rank or severe_alert(case)
    ):
        chosen.discard(Action.CLOSE_AS_FALSE_POSITIVE)
        counts["weakening_action"] += 1
    return [a for a in Action if a in chosen]  # enum order is the priority order


def severe_alert(case: Case) -> bool:
    """Does the case hold a HIGH or CRITICAL alert? Such a case is never closed as a false
    positive on the brief's word: the rule's author said it matters."""
    return any(a.get("severity") in SEVERE for a in case.alerts)


def _overruled_summary(
    draft: BriefDraft, floor: CaseBrief, argued: list[str] | None = None, lost: bool = False
) -> str:
    if draft.risk_level.rank < floor.risk_level.rank:
        why = (
            f"it argued {draft.risk_level.value} risk, below the deterministic "
            f"{floor.risk_level.value}"
        )
    elif _closes(draft, floor):
        why = f"it suggested closing a {floor.risk_level.value} case as a false positive"
    elif degenerate(draft.summary):
        why = "its summary repeats itself"
    elif argued:
        why = f"its prose argued a {' and '.join(argued)} other than the published one"
    else:
        why = "most of its claims were not supported by the case's events"
    return f"[Model draft overruled: {why}; the deterministic summary follows.] " + floor.summary
