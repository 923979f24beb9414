"""The procedures library: loading (errors name the file and line), its version, and
retrieval (deterministic, filtered by what each document applies to)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streamproc.brief.model import Action, ReasonCode
from streamproc.procedures.library import ProcedureError, load_library
from streamproc.procedures.retrieval import Retriever

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "procedures"

DOC = """---
id: {id}
title: Test procedure
version: "1"
owner: Test team
applies_to: [{codes}]
---
Intro.

## First step {{#first}}
Actions: REVIEW_TRANSACTIONS
{body}
"""
OK = DOC.format(id="x", codes="CARD_TESTING", body="x")
EMPTY = DOC.format(id="x", codes="CARD_TESTING", body="")


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_the_sample_library_loads_with_sections_and_actions() -> None:
    library = load_library(SAMPLE)
    ids = {p.id for p in library.procedures}
    assert {"card-testing", "account-takeover", "mule-referral", "app-scam", "disputes",
            "aml-escalation", "customer-contact"} <= ids  # fmt: skip
    assert all(p.sample for p in library.procedures)  # marked as a sample
    block = library.section("card-testing", "block-card")
    assert block is not None and Action.BLOCK_CARD in block.actions
    assert library.version.startswith("sha256:") and len(library.version) == 23


@pytest.mark.parametrize(
    ("text", "line", "says"),
    [
        ("id: x\n", 1, "front matter between"),
        ("---\nid: x\n", 1, "not closed"),
        ("---\nid: x\ntitle: t\nversion: 1\nowner: o\n---\n## A {#a}\ntext\n", 2, "applies_to"),
        (DOC.format(id="Bad Id", codes="CARD_TESTING", body="x"), 2, "lower-case"),
        (DOC.format(id="x", codes="NOT_A_CODE", body="x"), 6, "not a reason code"),
        (OK + "## No id here\ntext\n", 13, "heading"),
        (OK + "## Again {#first}\nt\n", 13, "repeats"),
        (EMPTY.replace("Actions: REVIEW_TRANSACTIONS\n", ""), 10, "no text"),
        (OK.replace("REVIEW_TRANSACTIONS", "PANIC"), 11, "not an action"),
        ("---\nid: [x\n---\n", 2, "not YAML"),
    ],
)  # fmt: skip
def test_a_malformed_document_is_refused_naming_its_file_and_line(
    tmp_path: Path, text: str, line: int, says: str
) -> None:
    _write(tmp_path, "good.md", DOC.format(id="good", codes="CARD_TESTING", body="Fine."))
    bad = _write(tmp_path, "bad.md", text)
    with pytest.raises(ProcedureError) as caught:
        load_library(tmp_path)
    assert str(caught.value).startswith(f"{bad}:{line}: "), str(caught.value)
    assert says in str(caught.value)


def test_two_documents_with_one_id_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "a.md", DOC.format(id="same", codes="CARD_TESTING", body="A."))
    _write(tmp_path, "b.md", DOC.format(id="same", codes="CARD_TESTING", body="B."))
    with pytest.raises(ProcedureError, match=r"b\.md:2: id 'same' is also a\.md's"):
        load_library(tmp_path)


def test_the_version_is_the_content_a_changed_word_changes_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.md", DOC.format(id="a", codes="CARD_TESTING", body="Block it."))
    first = load_library(tmp_path).version
    assert load_library(tmp_path).version == first
    path.write_text(DOC.format(id="a", codes="CARD_TESTING", body="Block it now."))
    assert load_library(tmp_path).version != first


def test_retrieval_ranks_the_typologys_sections_first_and_is_deterministic() -> None:
    retriever = Retriever(load_library(SAMPLE))
    facts = ["8 small card-not-present debits at 5 merchants within 10 min, 4 declined"]
    first = retriever.search([ReasonCode.CARD_TESTING], facts)
    assert [p.section.procedure_id for p in first] == ["card-testing"] * 3
    assert first == Retriever(load_library(SAMPLE)).search([ReasonCode.CARD_TESTING], facts)
    mule = retriever.search([ReasonCode.MULE_ACTIVITY], ["six senders, one beneficiary"])
    assert mule and all(p.section.procedure_id in ("mule-referral", "aml-escalation") for p in mule)


def test_a_document_is_searched_only_for_the_codes_it_applies_to() -> None:
    retriever = Retriever(load_library(SAMPLE))
    got = retriever.search([ReasonCode.NEW_PAYEE], ["block the card after card testing"])
    assert got and "card-testing" not in {p.section.procedure_id for p in got}


def test_a_banks_own_library_changes_the_passages_and_the_version(tmp_path: Path) -> None:
    own = tmp_path / "bank"
    _write(own, "cards.md", DOC.format(id="bank-cards", codes="CARD_TESTING",
                                       body="Freeze the card and call the customer."))  # fmt: skip
    sample, bank = load_library(SAMPLE), load_library(own)
    assert bank.version != sample.version
    got = Retriever(bank).search([ReasonCode.CARD_TESTING], ["small declined debits"])
    assert [(p.section.procedure_id, p.section.section_id) for p in got] == [
        ("bank-cards", "first")
    ]


def test_the_sample_library_ships_inside_the_package() -> None:
    from streamproc import data

    shipped = load_library(data.path("procedures"))
    assert shipped.version == load_library(SAMPLE).version


def test_encodings_line_ends_and_stray_files_are_handled(tmp_path: Path) -> None:
    """Second review: a non-UTF-8 file raised a bare error, a BOM was refused, a CRLF
    checkout was another version, an editor's dotfile was read as a document, and an
    'Actions:' line after a blank line was silently taken as text."""
    text = DOC.format(id="a", codes="CARD_TESTING", body="Block it.")
    _write(tmp_path / "lf", "a.md", text)
    (tmp_path / "crlf").mkdir()
    (tmp_path / "crlf" / "a.md").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    (tmp_path / "crlf" / "._a.md").write_bytes(b"\x00\x05\x16\x07\xff")  # macOS resource fork
    assert load_library(tmp_path / "lf").version == load_library(tmp_path / "crlf").version
    bad = tmp_path / "latin" / "b.md"
    bad.parent.mkdir()
    bad.write_bytes(text.replace("Block it.", "Bloquer la carte \u00e0 temps.").encode("latin-1"))
    with pytest.raises(ProcedureError, match=rf"^{re.escape(str(bad))}:1: not UTF-8"):
        load_library(bad.parent)
    late = _write(tmp_path / "late", "c.md", text.replace("Actions:", "\nActions:"))
    assert load_library(late.parent).section("a", "first").actions  # after a blank line
    wrong = _write(tmp_path / "wrong", "d.md", text + "more text\naction: BLOCK_CARD\n")
    with pytest.raises(ProcedureError, match=r"d\.md:\d+: an 'Actions:' line goes right under"):
        load_library(wrong.parent)
