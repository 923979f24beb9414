"""A procedures library: Markdown documents with front matter and sections with ids.

A document:

    ---
    id: card-testing                 # unique in the library
    title: Card testing
    version: "2026.1"
    owner: Card fraud operations
    applies_to: [CARD_TESTING, ...]  # reason codes the document is for
    ---
    Text before the first section (not retrieved).

    ## Block the card {#block-card}
    Actions: BLOCK_CARD, HOLD_PENDING_REVIEW     (optional: what it is a basis for)
    The section's text.

The library's version is the hash of its files' names and bytes: a changed word is a
new version. A malformed document stops the loading with a message naming its file and
line (ProcedureError): a worker does not start on a library it cannot cite from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from streamproc.brief.model import Action, ReasonCode
from streamproc.errors import ConfigError

REQUIRED = ("id", "title", "version", "owner", "applies_to")
ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
HEADING = re.compile(r"^## (?P<title>.+?) \{#(?P<id>[^}]*)\}\s*$")
ACTIONS = re.compile(r"^Actions:\s*(?P<names>.*)$")
LOOSE_ACTIONS = re.compile(r"^\s*actions?\s*:", re.IGNORECASE)  # misplaced or misspelled
MAX_SECTION_CHARS = 4000  # a passage the prompt can carry whole


class ProcedureError(ConfigError):
    """A procedures document that cannot be read; the message names its file and line."""


@dataclass(frozen=True)
class Section:
    procedure_id: str
    section_id: str
    title: str
    text: str
    actions: frozenset[Action]
    content_hash: str  # of the section's title and text: what the audit record cites


@dataclass(frozen=True)
class Procedure:
    id: str
    title: str
    version: str
    owner: str
    applies_to: frozenset[ReasonCode]
    sections: tuple[Section, ...]
    sample: bool = False


@dataclass(frozen=True)
class Library:
    procedures: tuple[Procedure, ...]
    version: str  # "sha256:" + the hash of every file's name and bytes

    def sections(self) -> Iterable[Section]:
        for procedure in self.procedures:
            yield from procedure.sections

    def section(self, procedure_id: str, section_id: str) -> Section | None:
        for s in self.sections():
            if s.procedure_id == procedure_id and s.section_id == section_id:
                return s
        return None


def load_library(folder: Path) -> Library:
    """Every `*.md` document of `folder`, in name order; raises ProcedureError."""
    if not folder.is_dir():
        raise ProcedureError(f"{folder}: not a folder of procedures (STREAMPROC_PROCEDURES_DIR)")
    files = sorted(p for p in folder.glob("*.md") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ProcedureError(f"{folder}: no procedure documents (*.md)")
    digest = hashlib.sha256()
    procedures: list[Procedure] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            text = path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
        except UnicodeDecodeError as exc:
            raise ProcedureError(f"{path}:1: not UTF-8 (byte {exc.start})") from None
        # The text, not the bytes: a checkout with CRLF line ends is the same version.
        digest.update(path.name.encode() + b"\0" + text.encode() + b"\0")
        procedure = parse_document(path, text)
        if procedure.id in seen:
            raise ProcedureError(
                f"{path}:2: id {procedure.id!r} is also {seen[procedure.id].name}'s"
            )
        seen[procedure.id] = path
        procedures.append(procedure)
    return Library(tuple(procedures), "sha256:" + digest.hexdigest()[:16])


def parse_document(path: Path, text: str) -> Procedure:
    lines = text.split("\n")  # not splitlines(): line numbers as editors count them
    if not lines or lines[0].strip() != "---":
        raise ProcedureError(f"{path}:1: a document starts with front matter between '---' lines")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise ProcedureError(f"{path}:1: the front matter is not closed by '---'") from None
    try:
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = 2 + (mark.line if mark is not None else 0)
        raise ProcedureError(f"{path}:{line}: front matter is not YAML") from None
    if not isinstance(meta, dict):
        raise ProcedureError(f"{path}:2: front matter must be a mapping")
    for key in REQUIRED:
        if meta.get(key) in (None, "", []):
            raise ProcedureError(f"{path}:{_line_of(lines, key, end)}: front matter lacks {key!r}")
    doc_id = str(meta["id"])
    if not ID.fullmatch(doc_id):
        raise ProcedureError(f"{path}:{_line_of(lines, 'id', end)}: id {doc_id!r} must be "
                             "lower-case letters, digits and '-'")  # fmt: skip
    applies = meta["applies_to"]
    if not isinstance(applies, list):
        raise ProcedureError(f"{path}:{_line_of(lines, 'applies_to', end)}: applies_to is a list")
    codes = set()
    for code in applies:
        try:
            codes.add(ReasonCode(str(code)))
        except ValueError:
            raise ProcedureError(
                f"{path}:{_line_of(lines, 'applies_to', end)}: {code!r} is not a reason code"
            ) from None
    sections = _sections(path, doc_id, lines, end + 1)
    if not sections:
        raise ProcedureError(f"{path}:{end + 2}: no section ('## Title {{#section-id}}')")
    return Procedure(
        doc_id,
        str(meta["title"]),
        str(meta["version"]),
        str(meta["owner"]),
        frozenset(codes),
        tuple(sections),
        meta.get("sample") is True,
    )


def _sections(path: Path, doc_id: str, lines: list[str], start: int) -> list[Section]:
    out: list[Section] = []
    current: tuple[int, str, str] | None = None  # (line, id, title)
    body: list[str] = []
    actions: set[Action] = set()
    ids: set[str] = set()

    def close() -> None:
        if current is None:
            return
        line, section_id, title = current
        text = "\n".join(body).strip()
        if not text:
            raise ProcedureError(f"{path}:{line}: section {section_id!r} has no text")
        if len(text) > MAX_SECTION_CHARS:
            raise ProcedureError(f"{path}:{line}: section {section_id!r} is longer than "
                                 f"{MAX_SECTION_CHARS} characters")  # fmt: skip
        content = hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:16]
        out.append(Section(doc_id, section_id, title, text, frozenset(actions), content))

    for i in range(start, len(lines)):
        line = lines[i]
        if line.startswith("## "):
            heading = HEADING.match(line)
            if heading is None:
                raise ProcedureError(f"{path}:{i + 1}: a section heading is "
                                     "'## Title {#section-id}'")  # fmt: skip
            close()
            section_id = heading["id"]
            if not ID.fullmatch(section_id):
                raise ProcedureError(f"{path}:{i + 1}: section id {section_id!r} must be "
                                     "lower-case letters, digits and '-'")  # fmt: skip
            if section_id in ids:
                raise ProcedureError(f"{path}:{i + 1}: section id {section_id!r} repeats")
            ids.add(section_id)
            current, body, actions = (i + 1, section_id, heading["title"].strip()), [], set()
            continue
        leading = not any(b.strip() for b in body)  # only blank lines since the heading
        named = ACTIONS.match(line) if current is not None and leading else None
        if named is None and current is not None and LOOSE_ACTIONS.match(line):
            raise ProcedureError(f"{path}:{i + 1}: an 'Actions:' line goes right under its "
                                 "section's heading")  # fmt: skip
        if named is not None:
            for name in (n.strip() for n in named["names"].split(",") if n.strip()):
                try:
                    actions.add(Action(name))
                except ValueError:
                    raise ProcedureError(f"{path}:{i + 1}: {name!r} is not an action") from None
            continue
        if current is not None:
            body.append(line)
    close()
    return out


def _line_of(lines: list[str], key: str, end: int) -> int:
    """The line (1-based) of `key:` in the front matter, else its first line."""
    for i in range(1, end):
        if lines[i].split(":", 1)[0].strip() == key:
            return i + 1
    return 2
