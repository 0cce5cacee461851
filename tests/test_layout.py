"""The package layout reads top-down, as docs/architecture.md draws it: face, ``state/``, the two
halves ``grouping/`` and ``step/`` (neither imports the other), ``options/`` (the vocabulary both
halves share), ``errors``. Checked from the source with ``ast``: every import (module level,
inside functions, under ``TYPE_CHECKING``) of every module under ``src/paramwise``.
"""

from __future__ import annotations

import ast
import inspect
import pickle
import pickletools
from pathlib import Path

import torch

import paramwise

SRC = Path(paramwise.__file__).parent

#: layer -> the layers its modules may import (besides their own layer). A module's layer is the
#: sub-package it sits in; ``paramwise.errors`` is the bottom; every other top-level module is
#: the face.
ALLOWED = {
    "face": {"state", "grouping", "step", "options", "errors"},
    "state": {"grouping", "step", "options", "errors"},
    "grouping": {"options", "errors"},
    "step": {"options", "errors"},
    "options": {"errors"},
    "errors": set(),
}
SUBPACKAGES = ("state", "grouping", "step", "options")


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "paramwise.errors":
        return "errors"
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else "face"


def modules(root: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def imports(source: str, module: str, is_pkg: bool, known: set[str]) -> dict[str, int]:
    """The paramwise modules ``source`` imports (anywhere in it), each with a line number."""
    out: dict[str, int] = {}
    package = module.split(".") if is_pkg else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1]
                                + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from . import x`` imports the submodule x when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t == "paramwise" or t.startswith("paramwise."):
                while t not in known:  # paramwise.x.y where y is a name in module x
                    t = t.rsplit(".", 1)[0]
                if t != module:
                    out.setdefault(t, node.lineno)
    return out


def graph(root: Path = SRC) -> dict[str, dict[str, int]]:
    mods = modules(root)
    return {m: imports(p.read_text(encoding="utf-8"), m, pkg, set(mods))
            for m, (p, pkg) in mods.items()}


def layer_violations(g: dict[str, dict[str, int]]) -> list[str]:
    return [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)}) at line {line}"
            for m, targets in g.items() for t, line in targets.items()
            if layer_of(t) != layer_of(m) and layer_of(t) not in ALLOWED[layer_of(m)]]


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import cycles of ``g``: one path per strongly connected component of more than one
    module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down_a_layer():
    assert layer_violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_subpackage_inits_say_what_the_layer_is_and_import_nothing():
    for path in SRC.rglob("__init__.py"):
        if path.parent == SRC or path.parent.name == "demo":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), path
        assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)), path


def test_no_module_grows_past_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_the_checks_catch_a_bad_import(tmp_path):
    """The checks above can fail: a copy of the package with one import pointing up a layer
    (step -> grouping, which also closes a cycle) is caught by both."""
    import shutil

    copy = tmp_path / "paramwise"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    prox = copy / "step" / "prox.py"
    prox.write_text(prox.read_text(encoding="utf-8") + "\nfrom ..grouping import plan\n",
                    encoding="utf-8")
    plan = copy / "grouping" / "plan.py"
    plan.write_text(plan.read_text(encoding="utf-8")
                    + "\n\ndef _f():\n    from ..step import prox  # noqa\n", encoding="utf-8")
    g = graph(copy)
    assert any(v.startswith("paramwise.step.prox (layer step) imports paramwise.grouping.plan")
               for v in layer_violations(g))
    assert any({"paramwise.grouping.plan", "paramwise.step.prox"} <= set(c) for c in cycles(g))
    assert graph(copy)["paramwise.grouping.plan"]["paramwise.step.prox"] > 0  # in a function


#: The public API: every name of ``paramwise.__all__``, what it is and its signature.
PUBLIC = {
    'AuditReport': ('class', "(findings: 'list[Finding]', optimizer: 'str', groups: 'int', tensors: 'int', elements: 'int', ignored: 'tuple[str, ...]' = (), sample: 'int' = 3) -> None"),
    'Hybrid': ('class', "(optimizers: 'Sequence[torch.optim.Optimizer]') -> 'None'"),
    'LoadReport': ('class', "(loaded: 'list[str]' = <factory>, new: 'list[str]' = <factory>, vanished: 'list[str]' = <factory>, reshaped: 'list[str]' = <factory>, moved: 'dict[str, str]' = <factory>, changed: 'dict[str, dict[str, tuple[object, object]]]' = <factory>, renamed: 'dict[str, str]' = <factory>, options: 'str' = 'current rules', regrouped: 'bool' = False) -> None"),
    'ParamwiseError': ('class', "(message: 'str', *, fix: 'str | None' = None, detail: 'str | None' = None) -> 'None'"),
    'Report': ('class', "(rows: 'list[dict]' = <factory>, columns: 'list[str]' = <factory>, shared: 'dict[str, object]' = <factory>, frozen_tensors: 'int | None' = None, frozen_elements: 'int | None' = None, sample: 'int' = 3) -> None"),
    'Rule': ('class', "(select: 'SelectorLike', *, label: 'str | None' = None, origin: 'str | None' = None, **options: 'object')"),
    'Selector': ('class', '()'),
    'attach': ('function', "(optimizer: 'torch.optim.Optimizer', *, foreach: 'bool | None' = None) -> 'Handle'"),
    'audit': ('function', "(model: 'nn.Module', optimizer: 'torch.optim.Optimizer', *, scheduler: 'Any' = None, ignore: 'Iterable[str]' = ()) -> 'AuditReport'"),
    'explain': ('function', "(obj: 'nn.Module | torch.optim.Optimizer', name: 'str', rules=None, **defaults: 'object') -> 'str'"),
    'from_config': ('function', "(model: 'nn.Module', cfg: 'Mapping | str | os.PathLike', *, allow_imports: 'Iterable[str]' = (), **overrides: 'object') -> 'torch.optim.Optimizer'"),
    'hidden_matrices': ('function', "(optimizer: 'str | type' = 'muon', **options: 'object') -> 'HiddenMatrices'"),
    'layer_decay': ('function', "(rate: 'float', *, depth: 'Callable[[str], int] | str | None' = None, min_scale: 'float' = 0.0) -> 'LayerDecay'"),
    'load_dcp': ('function', "(optimizer: 'torch.optim.Optimizer', checkpoint_id: 'object', *, key: 'str' = 'optim', storage_reader: 'object | None' = None, keep_saved_options: 'bool | Iterable[str]' = False, strict: 'bool' = False, model: 'torch.nn.Module | None' = None) -> 'LoadReport'"),
    'load_state_dict': ('function', "(optimizer: 'torch.optim.Optimizer', state: 'Mapping', *, keep_saved_options: 'bool | Iterable[str]' = False, strict: 'bool' = False, model: 'torch.nn.Module | None' = None) -> 'LoadReport'"),
    'no_decay': ('function', "(*, bias: 'bool' = True, norm: 'bool' = True, embedding: 'bool' = True, gain: 'bool' = True, key: 'str' = 'weight_decay') -> 'Rule'"),
    'optimizer': ('function', "(model: 'nn.Module', optim: 'str | type', rules: 'Iterable[RuleLike] | RuleLike' = (), *, strict: 'bool' = True, include_frozen: 'bool' = False, **defaults: 'object') -> 'torch.optim.Optimizer'"),
    'param_groups': ('function', "(model: 'nn.Module', rules: 'Iterable[RuleLike] | RuleLike' = (), *, optimizer: 'str | type | None' = None, strict: 'bool' = True, include_frozen: 'bool' = False, **defaults: 'object') -> 'list[dict]'"),
    'parse': ('function', "(text: 'str') -> 'Selector'"),
    'penalty': ('function', "(obj: 'nn.Module | torch.optim.Optimizer') -> 'torch.Tensor'"),
    'register_norm': ('function', "(cls: 'type') -> 'type'"),
    'register_scaling': ('function', "(cls: 'type', rule: 'Scaling') -> 'None'"),
    'register_wrapper': ('function', "(cls: 'type', attr: 'str' = 'module') -> 'type'"),
    'report': ('function', "(obj: 'nn.Module | torch.optim.Optimizer', rules=None, *, sample: 'int' = 3, **defaults: 'object') -> 'Report'"),
    'state_dict': ('function', "(optimizer: 'torch.optim.Optimizer', *, model: 'torch.nn.Module | None' = None) -> 'dict'"),
    'stats': ('function', "(obj: 'nn.Module | torch.optim.Optimizer') -> 'dict'"),
}


def test_public_api_is_unchanged():
    assert sorted(paramwise.__all__) == sorted(PUBLIC)
    for name, (kind, sig) in PUBLIC.items():
        obj = getattr(paramwise, name)
        assert ("class" if isinstance(obj, type) else "function") == kind, name
        assert obj.__name__ == name, name
        assert str(inspect.signature(obj)) == sig, name


def test_module_paths_users_see_are_stable():
    """What holds a module path outside the process: tracebacks and doctest output print
    ``paramwise.errors.ParamwiseError``; a pickled ``Hybrid`` names ``paramwise.hybrid``;
    checkpoints (``paramwise.state_dict``, ``optimizer.state_dict()``) name no paramwise module."""
    assert paramwise.ParamwiseError.__module__ == "paramwise.errors"
    assert paramwise.Hybrid.__module__ == "paramwise.hybrid"

    def globals_in(obj: object) -> set[str]:
        out, strings = set(), []
        for op, arg, _ in pickletools.genops(pickle.dumps(obj)):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(arg)
            elif op.name == "STACK_GLOBAL":
                out.add(".".join(strings[-2:]))
            elif op.name == "GLOBAL":
                out.add(arg.replace(" ", "."))
        return {g for g in out if g.startswith("paramwise")}

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    opt = paramwise.optimizer(model, "adamw", [paramwise.hidden_matrices(lr=0.02),
                                              paramwise.Rule("bias", l1=1e-4)], lr=1e-3)
    assert isinstance(opt, paramwise.Hybrid)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert globals_in(opt) == {"paramwise.hybrid.Hybrid"}
    assert globals_in(opt.state_dict()) == set()
    assert globals_in(paramwise.state_dict(opt)) == set()
