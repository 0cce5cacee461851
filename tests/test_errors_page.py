"""docs/errors.md lists every kind of ParamwiseError: a new raise site fails this test until the
page says which section it belongs to.

What is compared: *raise sites per function*, never message text. A raise site is a call that
builds a ParamwiseError (the class itself, a subclass of it such as the CLI's usage error, or a
helper that returns one, such as the selector parser's ``_syntax``), counted per
enclosing function, named by its qualified name without the module (``make_plan``,
``Hybrid.load_state_dict``) so moving a module to another package changes nothing. Each kind
section on the page carries a comment under its heading::

    <!-- raised by: make_plan*2 Inventory.build -->

(``*2``: two raise sites of that function belong to this kind). The counts summed over the page
must equal the counts in ``src/paramwise``. So rewording a message changes nothing here; adding a
raise (a new kind, or a new case in a function that already raises) fails until a section names
it, as does a function that is renamed or stops raising while the page still lists it.

Each section with such a comment must also show its message (a ``<!-- raises -->`` block that
test_doc_blocks.py runs, or a ``text`` block) and say how to fix it (a ``**Fix:**`` paragraph).
"""

from __future__ import annotations

import ast
import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "paramwise"
PAGE = ROOT / "docs" / "errors.md"
ERROR = "ParamwiseError"
LISTED = re.compile(r"<!--\s*raised by:(.*?)-->", re.S)
HEADING = re.compile(r"^(#{2,3}) (.+)$", re.M)


def _constructors(trees: dict[pathlib.Path, ast.Module]) -> tuple[set[str], set[str]]:
    """Names whose call builds a ParamwiseError: the class, its subclasses (transitively),
    and functions annotated ``-> ParamwiseError`` or returning ``ParamwiseError(...)`` (the
    last also returned apart: their own ``ParamwiseError(...)`` is not a raise site, their
    callers' calls are)."""
    classes, factories = {ERROR}, set()
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for n in ast.walk(tree):
                if (isinstance(n, ast.ClassDef) and n.name not in classes
                        and any(isinstance(b, ast.Name) and b.id in classes for b in n.bases)):
                    classes.add(n.name)
                    changed = True
    for tree in trees.values():
        for n in ast.walk(tree):
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            annotated = n.returns is not None and ast.unparse(n.returns).strip("'\"") in classes
            returns_one = any(isinstance(r, ast.Return) and isinstance(r.value, ast.Call)
                              and isinstance(r.value.func, ast.Name) and r.value.func.id in classes
                              for r in ast.walk(n))
            if annotated or returns_one:
                factories.add(n.name)
    return classes | factories, factories


def raise_sites(src: pathlib.Path = SRC) -> dict[str, list[str]]:
    """``{qualified function name: ["file:line", ...]}`` for every ParamwiseError built in ``src``."""
    trees = {f: ast.parse(f.read_text(), str(f)) for f in sorted(src.rglob("*.py"))}
    ctors, factories = _constructors(trees)
    out: dict[str, list[str]] = collections.defaultdict(list)

    def walk(node: ast.AST, qual: str, path: pathlib.Path) -> None:
        for child in ast.iter_child_nodes(node):
            name = qual
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if child.name in factories and not isinstance(child, ast.ClassDef):
                    continue
                name = f"{qual}.{child.name}" if qual else child.name
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                    and child.func.id in ctors):
                out[name or "<module>"].append(f"{path.relative_to(src.parent)}:{child.lineno}")
            walk(child, name, path)

    for path, tree in trees.items():
        walk(tree, "", path)
    return dict(out)


def page_sections(text: str) -> list[dict]:
    """The page's ``##``/``###`` sections: heading, body, and the sites its comment lists."""
    heads = list(HEADING.finditer(text))
    out = []
    for k, m in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        body = text[m.end():end]
        listed: collections.Counter[str] = collections.Counter()
        for comment in LISTED.findall(body):
            for item in comment.split():
                fn, _, n = item.partition("*")
                listed[fn] += int(n) if n else 1
        out.append({"heading": m.group(2).strip(), "level": len(m.group(1)), "body": body,
                    "listed": listed})
    return out


def mismatches(sites: dict[str, list[str]], sections: list[dict]) -> list[str]:
    """What the page and the source disagree on, one line each (empty: they agree)."""
    listed: collections.Counter[str] = collections.Counter()
    for s in sections:
        listed.update(s["listed"])
    problems = []
    for fn in sorted(set(sites) | set(listed)):
        have, said = len(sites.get(fn, [])), listed.get(fn, 0)
        if have > said:
            problems.append(f"{fn} raises ParamwiseError at {have} sites "
                            f"({', '.join(sites[fn])}) but the page lists {said}: document the "
                            f"new kind in a section (or add '{fn}' to the 'raised by' comment of "
                            "the section it belongs to)")
        elif have < said:
            problems.append(f"the page lists {said} raise sites of {fn} but the source has "
                            f"{have}: update the 'raised by' comments (renamed, moved or removed?)")
    return problems


def test_every_raise_site_is_on_the_page():
    sites = raise_sites()
    assert sum(map(len, sites.values())) > 150  # the scan sees the package (not an empty tree)
    problems = mismatches(sites, page_sections(PAGE.read_text()))
    assert not problems, "docs/errors.md is out of date:\n" + "\n".join(problems)


def test_each_kind_shows_its_message_and_its_fix():
    kinds = [s for s in page_sections(PAGE.read_text()) if s["listed"]]
    assert len(kinds) >= 30
    for s in kinds:
        assert s["level"] == 3, f"{s['heading']!r}: a kind is a ### section"
        live = "<!-- raises -->" in s["body"]
        assert live or "```text" in s["body"], f"{s['heading']!r} shows no message"
        assert "**Fix:**" in s["body"], f"{s['heading']!r} does not say how to fix it"
        headings = [t["heading"] for t in kinds]
        assert headings.count(s["heading"]) == 1, f"two sections are called {s['heading']!r}"


def test_the_check_fails_on_an_undocumented_raise(tmp_path):
    """The comparison is not vacuous: a new raise in a function the page already lists, a new
    function that raises (also through a subclass or a factory), and a stale entry all fail."""
    pkg = tmp_path / "paramwise"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "errors.py").write_text("class ParamwiseError(ValueError):\n    pass\n")
    (pkg / "sub" / "mod.py").write_text(
        "from ..errors import ParamwiseError\n"
        "class _Usage(ParamwiseError):\n    pass\n"
        "def _make(x) -> ParamwiseError:\n    return ParamwiseError(x)\n"
        "def _bare(x):\n    return _Usage(x)\n"
        "def build(x):\n"
        "    if x:\n        raise ParamwiseError('a', fix='b')\n"
        "    raise _Usage('c')\n"
        "class Thing:\n    def go(self):\n        raise _make('d')\n"
        "    def again(self):\n        raise _bare('e')\n")
    sites = raise_sites(pkg)
    assert {k: len(v) for k, v in sites.items()} == {"build": 2, "Thing.go": 1, "Thing.again": 1}
    page = "### a\n<!-- raised by: build*2 -->\n### b\n<!-- raised by: Thing.go Thing.again -->\n"
    assert mismatches(sites, page_sections(page)) == []
    assert mismatches(sites, page_sections(page.replace("build*2", "build")))  # one more site
    assert mismatches(sites, page_sections(page.replace("Thing.go", "")))      # new function
    assert mismatches(sites, page_sections(page + "<!-- raised by: gone -->"))  # stale entry


@pytest.mark.parametrize("fn", ["make_plan", "Parser.term", "load_factory"])
def test_known_sites_are_found(fn):
    """Spot checks that direct raises, the parser's ``_syntax`` helper and the CLI's usage
    error subclass are all counted."""
    assert fn in raise_sites()
