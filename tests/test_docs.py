"""The README and docs/: every relative link resolves (files, and #anchors in Markdown files), the README
starts where a newcomer starts (install within its first 40 lines), and the dataset example of
docs/extending.md is the tested file examples/my_dataset.py, which registers a loadable dataset."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set:
    """GitHub's heading ids: lower case, punctuation dropped, spaces -> hyphens."""
    out, fence = set(), False
    for line in page.read_text().splitlines():
        fence ^= line.startswith("```")
        if not fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower().replace("`", "")
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def links(page: Path):
    fence = False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        fence ^= line.startswith("```")
        if not fence:
            for target in LINK.findall(line):
                if not re.match(r"[a-z]+:", target):  # http(s):, mailto: are not checked
                    yield n, target


def broken_links():
    bad = []
    for page in PAGES:
        for n, target in links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}:{n}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.relative_to(ROOT)}:{n}: {target} (no such heading)")
    return bad


def test_every_relative_link_of_the_readme_and_docs_resolves():
    assert len(PAGES) > 2 and broken_links() == []


def test_the_readme_installs_within_its_first_40_lines():
    head = (ROOT / "README.md").read_text().splitlines()[:40]
    assert any("pip install -e" in line for line in head) and any("pip install torch" in line for line in head)


def test_docs_show_the_dataset_example_verbatim():
    code = (ROOT / "examples" / "my_dataset.py").read_text()
    assert code[code.index("import torch"):] in (ROOT / "docs" / "extending.md").read_text()


def test_the_dataset_example_registers_a_loadable_dataset():
    from ggl.data import sources

    before = sources._SOURCES.snapshot()
    try:
        spec = importlib.util.spec_from_file_location("my_dataset", ROOT / "examples" / "my_dataset.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        data = sources.load_dataset("noise10")
        assert data.images.shape == (1000, 1, 32, 32) and data.num_classes == 10
        assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    finally:
        sources._SOURCES.restore(before)
        sources._cached.cache_clear()


if __name__ == "__main__":  # python tests/test_docs.py: the link check alone, one line per link
    for page in PAGES:
        for n, target in links(page):
            print(f"{page.relative_to(ROOT)}:{n}: {target}")
    print("broken:", broken_links() or "none")
