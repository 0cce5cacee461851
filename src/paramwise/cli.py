"""The command line: ``paramwise inspect`` and ``paramwise demo`` (also ``python -m paramwise``).

    $ paramwise inspect mypkg.models:build --config optim.yaml
    $ paramwise inspect path/to/model.py:build --optimizer sgd --explain encoder.0.bias
    $ paramwise inspect mypkg.models:build --config optim.yaml --json > groups.json
    $ paramwise demo --quick --out demo.png

``MODULE:FACTORY`` names a module (``mypkg.models``, found from the current directory too) or a
Python file (``path/to/model.py``) and, after the colon, a callable that takes no arguments and
returns an ``nn.Module`` (or an ``nn.Module`` object itself). Mistakes exit with status 2 and one
line on stderr; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from .errors import ParamwiseError

__all__ = ["main", "load_factory", "build_model"]


class _Usage(ParamwiseError):
    """A mistake in how the command was called (exit status 2)."""


def load_factory(spec: str) -> object:
    """The object ``spec`` (``pkg.mod:name`` or ``path/to/file.py:name``) points at.

        >>> load_factory("torch.nn:Identity")
        <class 'torch.nn.modules.linear.Identity'>
    """
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise _Usage(f"{spec!r} is not MODULE:FACTORY",
                     fix="write e.g. mypkg.models:build or path/to/model.py:build")
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where)
        if not path.is_file():
            raise _Usage(f"file {where!r} does not exist (in {os.getcwd()})",
                         fix="check the path, or use a module name such as mypkg.models")
        name = "_paramwise_factory_" + path.stem.replace("-", "_")
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise _Usage(f"cannot load {where!r} as Python code", fix="pass a .py file")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))  # so the file's sibling imports work
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ParamwiseError(f"running {where!r} raised {type(e).__name__}: {e}",
                                 fix="fix the error in that file (--debug shows the traceback)"
                                 ) from e
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())  # as `python -m` does
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name and where.startswith(e.name):
                raise _Usage(f"no module named {where!r} (looked in the current directory and "
                             "the installed packages)",
                             fix="run from the project's directory, install the package, or "
                             "pass a file: path/to/model.py:build") from e
            raise ParamwiseError(f"importing {where!r} failed: {e}",
                                 fix="install what it imports") from e
        except Exception as e:
            raise ParamwiseError(f"importing {where!r} raised {type(e).__name__}: {e}",
                                 fix="fix the error in that module (--debug shows the traceback)"
                                 ) from e
    try:
        return getattr(module, attr)
    except AttributeError:
        from .errors import did_you_mean

        public = [n for n in vars(module) if not n.startswith("_")]
        raise _Usage(f"{where!r} has no attribute {attr!r}{did_you_mean(attr, public)}",
                     fix="name a function that builds the model, e.g. "
                     f"{where}:{_guess(module) or 'build'}") from None


def _guess(module: object) -> str | None:
    for name, obj in vars(module).items():
        if not name.startswith("_") and callable(obj) and not isinstance(obj, type):
            return name
    return None


def build_model(spec: str) -> nn.Module:
    """Import ``spec`` and call it (no arguments) to get the model; an ``nn.Module`` is used as is."""
    obj = load_factory(spec)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise _Usage(f"{spec} is a {type(obj).__name__}, not a callable or an nn.Module",
                     fix="point at a function that returns the model")
    try:
        model = obj()
    except TypeError as e:
        raise _Usage(f"calling {spec}() failed: {e}",
                     fix="the factory must work without arguments; wrap it: "
                     "def build(): return MyModel(dim=256)") from e
    except Exception as e:
        raise ParamwiseError(f"{spec}() raised {type(e).__name__}: {e}",
                             fix="fix the factory (--debug shows the traceback)") from e
    if not isinstance(model, nn.Module):
        raise _Usage(f"{spec}() returned a {type(model).__name__}, not an nn.Module",
                     fix="return the model from the factory")
    return model


def _inspect(args: argparse.Namespace) -> int:
    from .api import optimizer
    from .config import from_config
    from .report import explain, report

    model = build_model(args.factory)
    if args.config:
        over = {"optimizer": args.optimizer} if args.optimizer else {}
        opt = from_config(model, args.config, **over)
    else:
        opt = optimizer(model, args.optimizer or "adamw")
    rep = report(opt)
    explained = [explain(opt, name) for name in args.explain]
    if args.json:
        out = {"model": args.factory, "optimizer": type(opt).__name__, **rep.to_dict()}
        if args.explain:
            out["explain"] = dict(zip(args.explain, explained))
        print(json.dumps(out, indent=2, default=_jsonable))
        return 0
    print(f"{args.factory}: {type(opt).__name__}, {len(opt.param_groups)} group(s)")
    print(rep)
    for text in explained:
        print()
        print(text)
    return 0


def _jsonable(obj: object) -> object:
    if isinstance(obj, tuple):
        return list(obj)
    item = getattr(obj, "item", None)
    if callable(item):
        try:
            return item()
        except (RuntimeError, ValueError):
            pass
    return repr(obj)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(quick=args.quick, out=args.out, parts=args.parts)
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="paramwise",
        description="Inspect per-parameter optimizer settings, or run the demo.")
    p.add_argument("--version", action="version", version=f"paramwise {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{inspect,demo}")
    sub.required = True

    ins = sub.add_parser("inspect", help="print the param-group table of a model",
                         description="Build a model from a factory and print the groups the "
                         "rules give it.")
    ins.add_argument("factory", metavar="MODULE:FACTORY",
                     help="pkg.module:build or path/to/file.py:build (no-argument callable "
                     "returning an nn.Module)")
    ins.add_argument("--config", metavar="PATH", help="YAML config with optimizer, options "
                     "and rules (see paramwise.from_config)")
    ins.add_argument("--optimizer", metavar="NAME", help="optimizer name; overrides the "
                     "config's (default: adamw)")
    ins.add_argument("--explain", metavar="NAME", action="append", default=[],
                     help="also say why parameter NAME got its options (repeatable)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ins.set_defaults(func=_inspect)

    demo = sub.add_parser("demo", help="train small models on digits and show what each "
                          "regularization choice does",
                          description="Three measured experiments on scikit-learn's digits "
                          "and a synthetic task; prints a table and writes a PNG figure.")
    demo.add_argument("--quick", action="store_true", help="a reduced run (under 20 s)")
    demo.add_argument("--out", metavar="PATH", default="paramwise-demo.png",
                      help="where to write the figure (default: paramwise-demo.png)")
    demo.add_argument("--parts", metavar="N,N", default="1,2,3",
                      help="which experiments to run (default: 1,2,3)")
    demo.set_defaults(func=_demo)
    for sp in (ins, demo):
        sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``paramwise`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ParamwiseError, ImportError) as e:
        if args.debug:
            traceback.print_exc()
        else:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"paramwise {args.command}: error: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paramwise {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
