"""The README's contents list and its sections agree (GitHub's anchor rule), and the quick start
is in the first screen."""

from __future__ import annotations

import re

from common.envs import ROOT

README = (ROOT / "README.md").read_text()


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _headings(level: str) -> list[str]:
    return [line[len(level) + 1 :] for line in README.splitlines() if line.startswith(level + " ")]


def test_every_contents_link_lands_on_a_section():
    contents = README.split("Contents:", 1)[1].split("\n\n", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    anchors = {_anchor(h) for h in _headings("##") + _headings("###")}
    assert links and not [link for link in links if link not in anchors]


def test_every_section_is_in_the_contents():
    contents = README.split("Contents:", 1)[1].split("\n\n", 1)[0]
    links = set(re.findall(r"\]\(#([^)]+)\)", contents))
    assert not [h for h in _headings("##") if _anchor(h) not in links]


def test_the_quick_start_is_in_the_first_screen():
    first_screen = "\n".join(README.splitlines()[:40])
    assert "## Quick start" in first_screen and "make test-all" in first_screen
