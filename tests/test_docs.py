"""The docs: a short README, generated tables that match their artifacts, links that resolve, user-facing prose.

Fast: no dataset, no training; `scripts/make_docs.py` runs on a copy of the docs and artifacts in a temp dir.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE_DOCS = ROOT / "scripts" / "make_docs.py"
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").rglob("*.md"))
USER_DOCS = [README, *DOCS]  # what a user reads
ALL_DOCS = [*USER_DOCS, ROOT / "CONTRIBUTING.md"]

# Words that belong to how embedfm was built, not to what it does or what was measured.
NARRATIVE = [
    r"\bsessions?\b",
    r"\blent\b",
    r"device tool",
    r"\bcommit\b",
    r"\b\d+ passed\b",
    r"\bwas (not )?available\b",
    r"\bno GPU was\b",
    r"\bthis machine\b",
]
# Figures that once stood in the README without an artifact behind them: they must not come back.
STALE = ["179 s", "184 s", "6.3 s", "52 s", "56–59 s", "3.4 % relative", "12.15", "12 min 32 s", "137 images/s"]


def run_make_docs(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(MAKE_DOCS), "--root", str(root), *args], capture_output=True, text=True, timeout=120
    )


def copy_docs_tree(dest: Path) -> Path:
    """README, docs/ and artifacts/reference/: all that make_docs reads or writes."""
    shutil.copy2(README, dest / "README.md")
    shutil.copytree(ROOT / "docs", dest / "docs")
    shutil.copytree(ROOT / "artifacts" / "reference", dest / "artifacts" / "reference")
    return dest


def snapshot(root: Path) -> dict[str, bytes]:
    files = [root / "README.md", *(root / "docs").rglob("*"), *(root / "artifacts" / "reference").rglob("*")]
    return {str(p.relative_to(root)): p.read_bytes() for p in files if p.is_file()}


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text()
    assert len(text) <= 8000, f"README.md has {len(text)} characters; move detail into docs/"
    block = [
        "# embedfm",
        "",
        "```bash",
        "make demo    # set up .venv, install, get the data, train CE and CE+triplet, evaluate, draw → artifacts/demo/",
        "make test    # set up the same .venv and run the test suite",
        "```",
    ]
    assert text.startswith("\n".join(block) + "\n")


def test_readme_has_one_headline_table_of_at_most_eight_rows():
    text = README.read_text()
    marker = "<!-- table: study/best/headline.md as=text -->"  # written by studies/best.py's publish
    assert text.count("<!-- table: ") == 1 and marker in text
    block = text.split(marker)[1].split("<!-- /table -->")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")][2:]  # minus header and rule
    assert 1 <= len(rows) <= 8
    assert all("](artifacts/reference/" in row for row in rows), "each row links to its artifact"


def test_make_docs_on_a_clean_copy_changes_nothing(tmp_path):
    root = copy_docs_tree(tmp_path)
    before = snapshot(root)
    proc = run_make_docs(root)
    assert proc.returncode == 0, proc.stderr
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"`make docs` would change {changed}: run it and commit the result\n{proc.stdout}"
    assert run_make_docs(root, "--check").returncode == 0


def test_make_docs_rewrites_stale_tables_and_keeps_the_prose(tmp_path):
    root = copy_docs_tree(tmp_path)
    page = root / "docs" / "results" / "demo.md"
    original = page.read_text()
    start, end = "<!-- table: demo-time -->\n", "<!-- /table -->"
    head, rest = original.split(start, 1)
    prose = "A hand-written line outside the markers.\n"
    stale = head + prose + start + "| stale | table |\n" + end + rest.split(end, 1)[1]
    page.write_text(stale)
    check = run_make_docs(root, "--check")
    assert check.returncode == 1 and "docs/results/demo.md" in check.stdout
    assert page.read_text() == stale, "--check writes nothing"
    assert run_make_docs(root).returncode == 0
    assert page.read_text() == head + prose + start + original.split(start, 1)[1]


def test_make_docs_names_an_unknown_table(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n")
    (tmp_path / "docs" / "x.md").write_text("<!-- table: no-such-table -->\n<!-- /table -->\n")
    proc = run_make_docs(tmp_path)
    assert proc.returncode == 2 and "no-such-table" in proc.stderr


def test_make_docs_imports_the_installed_package():
    src = MAKE_DOCS.read_text()
    assert "sys.path" not in src and src.startswith('"""')


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", strip_code(path.read_text()), re.M)}


def strip_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def links(path: Path) -> list[str]:
    text = re.sub(r"<!--.*?-->", "", strip_code(path.read_text()), flags=re.S)  # nor a table marker's template
    text = re.sub(r"`[^`\n]*`", "", text)  # links inside code are not links
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", ALL_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


@pytest.mark.parametrize("doc", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_describe_the_software_not_its_making(doc):
    text = doc.read_text()
    found = [p for p in NARRATIVE if re.search(p, text, re.I)]
    assert not found, f"{doc.relative_to(ROOT)} matches {found}"
    stale = [s for s in STALE if re.search(r"(?<![\d.])" + re.escape(s), text)]  # "52 s", not "152 s"
    assert not stale, f"{doc.relative_to(ROOT)} has figures no artifact backs: {stale}"


def test_every_docs_page_is_reachable():
    """Each page under docs/ is linked from the README or from another docs page."""
    linked = set()
    for doc in USER_DOCS:
        for target in links(doc):
            if not re.match(r"[a-z]+:", target) and target.partition("#")[0]:
                linked.add((doc.parent / target.partition("#")[0]).resolve())
    assert not [str(p.relative_to(ROOT)) for p in DOCS if p.resolve() not in linked]
