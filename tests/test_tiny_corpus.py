"""The tiny models' pre-training text does not depend on what the process imported.

Libraries patch standard-library members (one replaces ``inspect.getfile`` with an undocumented
wrapper); read in-process, the text, and so every tiny model, depended on who built it.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from adaptflow.errors import InvariantError
from adaptflow.stdlib_docs import module_text as read_here
from adaptflow.tiny import MODULES, general_text, module_texts


def test_a_patched_member_does_not_change_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    original = inspect.getfile
    before = module_texts(["inspect"])[0]
    assert "\n\ngetfile: Work out which source or compiled file an object" in before

    def getfile(obj: Any) -> str:  # undocumented, as the patching library's wrapper is
        return original(obj)

    monkeypatch.setattr(inspect, "getfile", getfile)
    assert "getfile:" not in read_here("inspect")  # what this process would have read
    assert module_texts(["inspect"]) == [before]


def test_the_general_text_is_one_document_per_module_in_order() -> None:
    texts = general_text()
    assert len(texts) == len(MODULES) == 95
    assert texts[MODULES.index("json")] == module_texts(["json"])[0]
    assert texts[MODULES.index("json")].startswith("JSON (JavaScript Object Notation)")
    # the CPython 3.11 text the tiny models of recipe version 4 were built from
    assert sum(map(len, texts)) == pytest.approx(525_782, abs=10_000)


def test_a_module_that_cannot_be_read_names_the_failure() -> None:
    failed = r"documentation failed \(exit 1\): ModuleNotFoundError: No module named 'no_such'"
    with pytest.raises(InvariantError, match=failed):
        module_texts(["json", "no_such"])
