"""Lexical retrieval over a procedures library: SQLite's FTS5 and its BM25 ranking.

Why FTS5: it ships with Python's sqlite3 (no new dependency, no native build), its
ranking is the standard BM25 and deterministic, and an in-memory index of a library
of a few hundred sections builds in milliseconds. bm25s and tantivy would do the same
ranking at a dependency's cost; a library this size does not need their speed.

The query is a case's reason codes, its typology words and the words of its key facts;
only sections of documents that apply to one of the case's reason codes are ranked.
Ties are broken by procedure and section id, so the same case and library always give
the same passages in the same order.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from streamproc.brief.model import ReasonCode
from streamproc.errors import ConfigError
from streamproc.procedures.library import Library, Section

WORD = re.compile(r"[a-z][a-z0-9]{2,}")
STOP = frozenset(
    [
        "the",
        "and",
        "for",
        "with",
        "from",
        "that",
        "this",
        "are",
        "was",
        "were",
        "its",
        "not",
        "but",
        "any",
        "all",
    ]
)
TOP_K = 3


@dataclass(frozen=True)
class Passage:
    section: Section
    score: float  # BM25, larger is better (FTS5's rank negated)


class Retriever:
    """An in-memory FTS5 index of one library's sections."""

    def __init__(self, library: Library) -> None:
        self.library = library
        try:
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
            self._db.execute(
                "CREATE VIRTUAL TABLE s USING fts5(title, body, codes, pid UNINDEXED, "
                "sid UNINDEXED, tokenize='porter unicode61')"
            )
        except sqlite3.OperationalError as exc:
            raise ConfigError(f"this Python's SQLite has no FTS5 ({exc}): procedures "
                              "retrieval needs it") from None  # fmt: skip
        self._sections: dict[tuple[str, str], Section] = {}
        applies = {p.id: p.applies_to for p in library.procedures}
        for section in library.sections():
            codes = " ".join(sorted(c.value.lower() for c in applies[section.procedure_id]))
            self._db.execute(
                "INSERT INTO s VALUES (?, ?, ?, ?, ?)",
                (section.title, section.text, codes, section.procedure_id, section.section_id),
            )
            self._sections[section.procedure_id, section.section_id] = section
        self._applies = applies

    def search(
        self, codes: Iterable[ReasonCode], texts: Iterable[str] = (), k: int = TOP_K
    ) -> list[Passage]:
        """The top `k` sections for a case with these reason codes and texts (typology,
        key facts), of documents that apply to one of the codes."""
        wanted = set(codes)
        words = {w for c in wanted for w in c.value.lower().split("_")}
        for text in texts:
            words |= {w for w in WORD.findall(text.lower()) if w not in STOP}
        allowed = {pid for pid, applies in self._applies.items() if applies & wanted}
        if not words or not allowed:
            return []
        query = " OR ".join(f'"{w}"' for w in sorted(words))
        rows = self._db.execute(
            "SELECT pid, sid, bm25(s, 2.0, 1.0, 3.0) FROM s WHERE s MATCH ? ",
            (query,),
        ).fetchall()
        ranked = sorted(
            (r for r in rows if r[0] in allowed), key=lambda r: (r[2], r[0], r[1])
        )  # bm25() is lower for better matches
        return [
            Passage(self._sections[pid, sid], round(-score, 6)) for pid, sid, score in ranked[:k]
        ]
