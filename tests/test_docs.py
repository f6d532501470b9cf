"""The docs people find: a README read in five minutes whose links all lead somewhere, and a site under docs/
that MkDocs builds in strict mode (a link to a missing page or heading fails the build, so no link rots). The
pages speak of oomladder, not of how it was made."""

import re
import subprocess
import sys
import unicodedata

import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs' table of contents makes it (Python-Markdown's default slugify)."""
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def anchors(page) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # a `#` in a code block is no heading
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+?)\s*$", text, re.M)}


def test_the_site_builds_in_strict_mode(tmp_path):
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (scripts/setup does)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    built = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert {p.stem for p in PAGES if p.stem != "index"} <= built  # every page is in the site


def test_every_relative_link_in_the_readme_leads_to_a_file_and_heading_that_exist():
    links = [m.group(1) for m in LINK.finditer(README.read_text())]
    relative = [link for link in links if not re.match(r"^[a-z]+:", link)]
    assert relative, "the README links to nothing in the repository"
    for link in relative:
        path, _, fragment = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        assert target.exists(), f"README links to {link}, and {path} does not exist"
        if fragment and target.suffix == ".md":
            assert fragment in anchors(target), f"README links to {link}, and {path} has no heading #{fragment}"


def test_the_readme_is_read_in_five_minutes_and_keeps_what_scripts_and_people_look_for():
    text = README.read_text()
    assert len(text.splitlines()) <= 260
    assert "scripts/demo    #" in text and "scripts/test    #" in text  # the two commands, as CI runs the second
    headings = anchors(README)
    assert {"two-commands", "gpu-check"} <= headings
    assert "docs/report-html.png" in text and (ROOT / "docs" / "report-html.png").is_file()


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_the_docs_speak_of_oomladder_not_of_how_it_was_made(page):
    text = page.read_text()
    for history in (r"\bissues? \d+\b", r"seed note", r"shared/seed", r"design card", r"\b20\d\d-\d\d-\d\d\b",
                    r"previous release", r"last session"):
        found = re.search(history, text, re.I)
        assert found is None, f"{page.name}: '{found.group(0)}'"
