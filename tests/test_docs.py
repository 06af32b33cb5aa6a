"""The README and docs/ describe the product as it is: no history, no unfilled placeholders."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# history: "session 2", "used to", "the then-default model", "tracked in the training issue"
HISTORY = re.compile(r"\bsessions?\b|\bused to\b|\bthen-default\b|\btracked in the\b|\bno longer\b|\bformerly\b",
                     re.IGNORECASE)
# <model with the session-2 defaults>, <registry>, <path>; inner products such as <u, m> have a comma
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>,|]{0,80}>")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_speak_of_the_product_as_it_is(path):
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found += [f"{path.name}:{number}: history {m.group(0)!r}: {line.strip()[:120]}" for m in HISTORY.finditer(line)]
        found += [f"{path.name}:{number}: placeholder {m.group(0)!r}" for m in PLACEHOLDER.finditer(line)]
    assert not found, "\n".join(found)


def test_the_checks_catch_what_they_are_for():
    assert HISTORY.search("retrieval 0.1 (session-2 default)") and HISTORY.search("the copy used to be a second pass")
    assert PLACEHOLDER.search("--compare 'x=<model with the session-2 defaults>'")
    assert not PLACEHOLDER.search("score = <u, m> + <u_r, m_r>") and not HISTORY.search("a SparkSession in local mode")
