"""The README and docs/ are the project's own reference: their links lead somewhere, the
README's set-up stays two commands, and nothing in the repository points at documents a
clone does not have."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docpages import DOCS, ROOT, blocks

PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
# Spelled in two parts so this file does not name them itself.
_ELSEWHERE = re.compile("|".join(("DESIGN" r"\.md", "EXCHANGES" r"\.md", r"\.\./" "shared")))
_SKIPPED = {".git", ".venv", "__pycache__", "balwatch.egg-info", ".mypy_cache", ".ruff_cache"}


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``."""
    text = "".join(block for block in re.split(r"^```.*?^```", page.read_text(), flags=re.M | re.S))
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in _HEADING.findall(text)
    }


def test_every_link_between_pages_leads_to_a_file_and_heading() -> None:
    broken = []
    for page in PAGES:
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_sets_up_with_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    (setup,) = blocks(section, "sh")
    commands = [line for line in setup.code.split("\n") if line and not line.startswith("#")]
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -q . && .venv/bin/balwatch demo",
        "bash tests/run",
    ]


def test_nothing_in_the_repository_points_at_documents_a_clone_lacks() -> None:
    found = []
    for path in ROOT.rglob("*"):
        if _SKIPPED.intersection(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        found += [
            f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
            for m in _ELSEWHERE.finditer(text)
        ]
    assert not found, "point these at docs/ instead:\n" + "\n".join(found)
