"""docs/api.md's examples run as written, in order, in a dir laid out like the docs assume (conftest.demo_dir)."""

import re
from pathlib import Path

import pytest
from conftest import ROOT

DOC = ROOT / "docs" / "api.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_docs_examples_run(demo_dir, monkeypatch):
    blocks = python_blocks(DOC)
    assert len(blocks) >= 5, "docs/api.md lost its examples"
    monkeypatch.chdir(demo_dir)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/api.md python block {i + 1} fails: {type(e).__name__}: {e}\n{block}") from e
    assert namespace["m"].reference_source == "embeddings.npz"  # the evaluated run's references were read
