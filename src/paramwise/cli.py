"""The command line: ``paramwise inspect``, ``paramwise audit`` and ``paramwise demo`` (also
``python -m paramwise``).

    $ paramwise inspect mypkg.models:build --config optim.yaml
    $ paramwise inspect path/to/model.py:build --optimizer sgd --explain encoder.0.bias
    $ paramwise inspect mypkg.models:build --config optim.yaml --json > groups.json
    $ paramwise audit mypkg.train:build_model_and_optimizer --json
    $ paramwise demo --quick --out demo.png

``MODULE:FACTORY`` names a module (``mypkg.models``, found from the current directory too) or a
Python file (``path/to/model.py``) and, after the colon, a callable that takes no arguments and
returns an ``nn.Module`` (or an ``nn.Module`` object itself); for ``audit`` it returns
``(model, optimizer)`` or ``(model, optimizer, scheduler)``.

Exit status: 0 done; 1 ``audit`` found something; 2 a mistake (one line on stderr; ``--debug``
shows the traceback instead), also when the factory file calls ``sys.exit()`` while it is
imported or called; 130 interrupted; 141 the reader of stdout went away (``... | head``), quietly.
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

import torch
from torch import nn

from . import __version__, demo
from .api import optimizer
from .audit import KINDS, audit
from .config import from_config
from .errors import ParamwiseError, did_you_mean
from .report import explain, report

__all__ = ["main", "load_factory", "build_model", "build_audited"]


class _Usage(ParamwiseError):
    """A mistake in how the command was called (exit status 2)."""


def load_factory(spec: str, does: str = "builds the model") -> object:
    """The object ``spec`` (``pkg.mod:name`` or ``path/to/file.py:name``) points at; ``does``
    says, in messages, what the function named there must do.

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
        except SystemExit as e:
            sys.modules.pop(name, None)
            raise _exited(f"running {where!r}", e) from None
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
        except SystemExit as e:
            raise _exited(f"importing {where!r}", e) from None
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
        public = [n for n in vars(module) if not n.startswith("_")]
        raise _Usage(f"{where!r} has no attribute {attr!r}{did_you_mean(attr, public)}",
                     fix=f"name a function that {does}, e.g. "
                     f"{where}:{_guess(module) or 'build'}") from None


def _exited(what: str, e: SystemExit) -> ParamwiseError:
    """A factory module or call that ran ``sys.exit()``: say so instead of exiting with it."""
    return ParamwiseError(f"{what} called sys.exit({e.code!r})",
                          fix="a factory must not exit: put the script part of that file under "
                          "`if __name__ == '__main__':`")


def _guess(module: object) -> str | None:
    for name, obj in vars(module).items():
        if not name.startswith("_") and callable(obj) and not isinstance(obj, type):
            return name
    return None


def _call(spec: str, obj: object, what: str) -> object:
    """Call the factory ``obj`` (no arguments), turning its failures into one-line errors."""
    if not callable(obj):
        raise _Usage(f"{spec} is a {type(obj).__name__}, not a callable or {what}",
                     fix=f"point at a function that returns {what}")
    try:
        return obj()
    except SystemExit as e:
        raise _exited(f"{spec}()", e) from None
    except TypeError as e:
        raise _Usage(f"calling {spec}() failed: {e}",
                     fix="the factory must work without arguments; wrap it: "
                     "def build(): return MyModel(dim=256)") from e
    except Exception as e:
        raise ParamwiseError(f"{spec}() raised {type(e).__name__}: {e}",
                             fix="fix the factory (--debug shows the traceback)") from e


def build_model(spec: str) -> nn.Module:
    """Import ``spec`` and call it (no arguments) to get the model; an ``nn.Module`` is used as is."""
    obj = load_factory(spec)
    if isinstance(obj, nn.Module):
        return obj
    model = _call(spec, obj, "an nn.Module")
    if not isinstance(model, nn.Module):
        raise _Usage(f"{spec}() returned a {type(model).__name__}, not an nn.Module",
                     fix="return the model from the factory")
    return model


def build_audited(spec: str) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """Import ``spec`` and call it to get ``(model, optimizer)`` or ``(model, optimizer,
    scheduler)``; the scheduler is None when not given."""
    obj = load_factory(spec, does="returns (model, optimizer) or (model, optimizer, scheduler)")
    got = obj if isinstance(obj, tuple) else _call(spec, obj, "(model, optimizer)")
    fix = ("return (model, optimizer) or (model, optimizer, scheduler) from the factory, e.g. "
           "return model, torch.optim.AdamW(model.parameters())")
    if not isinstance(got, (tuple, list)) or len(got) not in (2, 3):
        raise _Usage(f"{spec}() returned a {type(got).__name__}"
                     + (f" of {len(got)} items" if isinstance(got, (tuple, list)) else "")
                     + ", not (model, optimizer)", fix=fix)
    model, opt, sched = (*got, None)[:3]
    if not isinstance(model, nn.Module):
        raise _Usage(f"{spec}() returned a {type(model).__name__} where the model goes "
                     "(first item)", fix=fix)
    return model, opt, sched


def _inspect(args: argparse.Namespace) -> int:
    model = build_model(args.factory)
    if args.config:
        over = {"optimizer": args.optimizer} if args.optimizer else {}
        opt = from_config(model, args.config, allow_imports=args.allow_import, **over)
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


def _audit(args: argparse.Namespace) -> int:
    model, opt, sched = build_audited(args.factory)
    ignore = [k.strip() for arg in args.ignore for k in arg.split(",") if k.strip()]
    rep = audit(model, opt, scheduler=sched, ignore=ignore)
    if args.json:
        print(json.dumps({"factory": args.factory, **rep.to_dict()}, indent=2,
                         default=_jsonable))
    else:
        print(f"{args.factory}: {rep}")
    return 1 if rep.findings else 0


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
    demo.run(quick=args.quick, out=args.out, parts=args.parts)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paramwise",
        description="Inspect per-parameter optimizer settings, audit an optimizer built "
        "elsewhere, or run the demo.")
    p.add_argument("--version", action="version", version=f"paramwise {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{inspect,audit,demo}")
    sub.required = True

    ins = sub.add_parser("inspect", help="print the param-group table of a model",
                         description="Build a model from a factory and print the groups the "
                         "rules give it.")
    ins.add_argument("factory", metavar="MODULE:FACTORY",
                     help="pkg.module:build or path/to/file.py:build (no-argument callable "
                     "returning an nn.Module)")
    ins.add_argument("--config", metavar="PATH", help="YAML config with optimizer, options "
                     "and rules (see paramwise.from_config)")
    ins.add_argument("--allow-import", metavar="MODULE", action="append", default=[],
                     help="let the config name an optimizer from MODULE (a config never "
                     "imports a module otherwise; repeatable)")
    ins.add_argument("--optimizer", metavar="NAME", help="optimizer name; overrides the "
                     "config's (default: adamw)")
    ins.add_argument("--explain", metavar="NAME", action="append", default=[],
                     help="also say why parameter NAME got its options (repeatable)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ins.set_defaults(func=_inspect)

    aud = sub.add_parser("audit", help="check an optimizer built elsewhere against its model "
                         "(exit 1 on findings)",
                         description="Build (model, optimizer) from a factory and report what "
                         "the optimizer gets wrong: decayed biases/norms/embeddings/gains, keys "
                         "nothing reads, parameters in no group, ... Exit status 1 when there "
                         "are findings, 2 on usage errors.")
    aud.add_argument("factory", metavar="MODULE:FACTORY",
                     help="pkg.module:build or path/to/file.py:build (no-argument callable "
                     "returning (model, optimizer) or (model, optimizer, scheduler))")
    aud.add_argument("--ignore", metavar="KIND[,KIND]", action="append", default=[],
                     help="leave out findings of these kinds (repeatable): "
                     + ", ".join(KINDS))
    aud.add_argument("--json", action="store_true", help="print JSON instead of the table")
    aud.set_defaults(func=_audit)

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
    for sp in (ins, aud, demo):
        sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``paramwise`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored"
        return code
    except BrokenPipeError:
        # `paramwise ... --json | head`: the reader has gone; point stdout at devnull so the
        # interpreter's last flush stays quiet, and exit as a process killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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
