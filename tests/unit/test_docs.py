"""The README and docs/: links that resolve inside the repository, a README that fits
on about two screens, and examples that are what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from streamproc.brief.model import CaseBrief
from streamproc.brief.render import render_brief
from streamproc.llm.local import SETTINGS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLE = ROOT / "docs" / "examples" / "brief-account-takeover.json"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m[1]) for m in re.finditer(r"^#+ (.+)$", page.read_text(), flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    links = LINK.findall(page.read_text())
    if page == README:
        assert links, "the README links to docs/"
    for link in links:
        if link.startswith(("http://", "https://")):
            assert page != README, f"README links outside the repository: {link}"
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.is_relative_to(ROOT), f"{page.name}: {link} leaves the repository"
        assert target.exists(), f"{page.name}: {link} does not exist"
        if anchor:
            assert anchor in _anchors(target), f"{page.name}: no heading #{anchor} in {path}"


def test_the_readme_fits_on_about_two_screens_and_links_every_doc() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 130
    linked = {Path(link.partition("#")[0]).name for link in LINK.findall(text)}
    docs = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert docs <= linked, f"docs not linked from the README: {docs - linked}"
    assert "../shared" not in text


def test_the_readme_brief_is_the_example_json_as_the_demo_renders_it() -> None:
    [block] = re.findall(
        r"## A brief, as the demo prints it\n\n```\n(.*?)```", README.read_text(), re.S
    )
    shown = [line for line in block.splitlines() if line.strip() != "…"]
    rendered = render_brief(json.loads(EXAMPLE.read_text())).splitlines()
    at = 0
    for line in shown:  # each line shown is a line of the rendering, in order
        assert line in rendered[at:], f"not in the rendering (in order): {line!r}"
        at = rendered.index(line, at) + 1
    assert len(shown) >= 15


def test_the_example_brief_follows_the_published_json_schema() -> None:
    schema = json.loads((ROOT / "schemas" / "case_brief.schema.json").read_text())
    brief = json.loads(EXAMPLE.read_text())
    jsonschema.validate(brief, schema)
    CaseBrief.model_validate(brief)
    assert brief["risk_level"] == "CRITICAL" and "ACCOUNT_TAKEOVER" in brief["reason_codes"]


def test_the_readme_local_model_settings_are_the_tested_ones() -> None:
    text = README.read_text()
    section = text[text.index("## Pointing it at a local model server") :]
    block = section[: section.index("```", section.index("```") + 3)]
    shown = dict(re.findall(r"STREAMPROC_([A-Z0-9_]+)=(\S+)", block))
    expected = {k.upper(): str(v) for k, v in SETTINGS.items()}
    assert {k: v for k, v in shown.items() if k not in ("LLM_BASE_URL", "LLM_MODEL")} == expected
