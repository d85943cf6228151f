"""Every relative link in the README and docs/ resolves: the file exists, and a `#fragment`
names a heading of it (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    """The relative links of `document` that resolve to nothing inside `root`."""
    broken = []
    for target in LINK.findall(FENCE.sub("", document.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if (
            not file.exists()
            or root not in (file, *file.parents)
            or (fragment and (file.suffix != ".md" or fragment not in anchors(file.read_text())))
        ):
            broken.append(target)
    return broken


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_relative_link_resolves() -> None:
    found = {str(d.relative_to(ROOT)): broken_links(d) for d in documents()}
    assert {name: links for name, links in found.items() if links} == {}
    assert len(documents()) >= 10  # the README and the docs it links to


def test_every_document_in_docs_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = {t.partition("#")[0] for t in LINK.findall(readme)}
    assert {f"docs/{d.name}" for d in documents()[1:]} <= linked


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Its part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#its-part) [ok](#here) [web](https://example.org/x)\n"
        "# Here\n[gone](missing.md) [no such part](other.md#nowhere)\n"
        "```\n[in a code block](ignored.md)\n```\n"
    )
    assert broken_links(page, tmp_path.resolve()) == ["missing.md", "other.md#nowhere"]


def test_the_readme_fits_on_a_few_screens() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
