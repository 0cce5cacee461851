"""Every Python block in the README and in docs/ runs as written, and prints what it shows.

A block is a fenced ```python block. It runs on its own (fresh globals, imports included), in an
empty working directory. Conventions the pages follow:

- ``# needs: transformers, omegaconf`` on a block's first line: the block is skipped (with the
  reason) where one of those packages is missing; ``make test`` installs them all.
- an HTML comment ``<!-- output -->`` right before the fenced block that follows a Python block
  marks that block as the Python block's output: what the block prints must match it, compared
  like a doctest (``...`` matches anything, whitespace runs are equal).
- an HTML comment ``<!-- raises -->`` right before a Python block: the block must raise
  :class:`paramwise.ParamwiseError`, and its message is the block's output (the errors page).
"""

from __future__ import annotations

import contextlib
import doctest
import importlib.util
import io
import pathlib
import re

import pytest

import paramwise

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(`{3,})(\w*)\s*$")


def blocks(path: pathlib.Path) -> list[dict]:
    """The fenced blocks of a page: language, code, first line, and the marker before it."""
    lines = path.read_text().splitlines()
    out: list[dict] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != fence:
            j += 1
        prev = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        out.append({"lang": lang, "code": "\n".join(lines[start + 1:j]), "line": start + 1,
                    "marker": prev if prev.startswith("<!--") else "", "end": j})
        i = j + 1
    return out


def cases() -> list:
    params = []
    for page in PAGES:
        bs = blocks(page)
        for n, b in enumerate(bs):
            if b["lang"] != "python":
                continue
            nxt = bs[n + 1] if n + 1 < len(bs) else None
            expected = nxt["code"] if nxt and nxt["marker"] == "<!-- output -->" else None
            rel = page.relative_to(ROOT)
            params.append(pytest.param(b["code"], expected, b["marker"] == "<!-- raises -->",
                                       id=f"{rel}:{b['line']}"))
    return params


def _check_output(got: str, want: str, where: str) -> None:
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    if not checker.check_output(want.strip() + "\n", got.strip() + "\n", flags):
        pytest.fail(f"{where}: the block printed\n{got}\nbut the page shows\n{want}")


@pytest.mark.parametrize(("code", "expected", "raises"), cases())
def test_block_runs_as_written(code, expected, raises, tmp_path, monkeypatch, request):
    first = code.splitlines()[0] if code else ""
    if first.startswith("# needs:"):
        for pkg in first.split(":", 1)[1].split(","):
            if importlib.util.find_spec(pkg.strip()) is None:
                pytest.skip(f"needs {pkg.strip()}")
    monkeypatch.chdir(tmp_path)
    where = request.node.callspec.id
    buf = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(buf):
        if raises:
            with pytest.raises(paramwise.ParamwiseError) as info:
                exec(compile(code, where, "exec"), namespace)
        else:
            exec(compile(code, where, "exec"), namespace)
    got = str(info.value) if raises else buf.getvalue()
    if expected is not None:
        _check_output(got, expected, where)


def test_pages_have_blocks():
    """The collector sees the pages' blocks (an empty parametrization would pass silently)."""
    assert sum(b["lang"] == "python" for b in blocks(ROOT / "README.md")) >= 1
    assert len(cases()) >= 1


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading (lowercase, punctuation dropped, spaces -> '-')."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_readme_links_reach_pages_and_headings():
    """The README is read on GitHub, outside the strict Sphinx build: its relative links must
    name files that exist and, with '#', a heading in them."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?!https?:)[^)\s]+)\)", text)
    assert links, "the README links into the docs"
    for link in links:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            headings = [_slug(h) for h in re.findall(r"^#{1,6} (.+)$", target.read_text(), re.M)]
            assert anchor in headings, f"README links to {link}: no such heading in {path}"


def test_readme_reads_in_five_minutes():
    """The README is the way in, not the manual: at most 200 lines (the docs hold the rest)."""
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move detail into docs/ and link to it"
