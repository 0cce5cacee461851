"""docs/api.md documents every public name: a name added to ``paramwise.__all__`` fails here until
the API reference has an autodoc entry for it (and the strict docs build then checks its
docstring)."""

from __future__ import annotations

import re
from pathlib import Path

import paramwise
from paramwise.audit import KINDS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.md"
ENTRY = re.compile(r"^\.\. auto(?:function|class|data|exception):: paramwise\.(\w+)\s*$", re.M)


def test_every_public_name_has_an_entry_in_the_api_reference():
    documented = ENTRY.findall(PAGE.read_text(encoding="utf-8"))
    assert sorted(set(paramwise.__all__) - set(documented)) == []
    assert sorted(set(documented) - set(paramwise.__all__)) == []
    assert len(documented) == len(set(documented)), "a name documented twice"


def test_the_audit_docstring_lists_every_kind_of_finding():
    """``paramwise.audit``'s docstring (the reference for the kinds) names each kind, in order."""
    listed = re.findall(r"^\s*- ``(\w+)``:", paramwise.audit.__doc__, re.M)
    assert listed == list(KINDS)
