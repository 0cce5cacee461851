"""Compare paramwise's no-decay / layer-decay presets with timm's param-group helpers.

Not part of the test suite. timm needs torchvision, which brings a torch of pip's choosing (on
Linux PyPI's CUDA build), so it runs in a separate venv, never in the project's. From the
repository root (docs/benchmarks.md, "The presets against timm", has the recorded run)::

    python -m venv /tmp/timm-venv
    /tmp/timm-venv/bin/pip install timm==1.0.31 -e .
    /tmp/timm-venv/bin/python -W ignore benchmarks/compare_timm.py [--collapse] [MODEL ...]

(a) no-decay: ``timm.optim.param_groups_weight_decay(model, 0.1, no_weight_decay_list=...)`` vs
    ``paramwise.param_groups(model, [no_decay()], weight_decay=0.1)``: per parameter, which side decays.
(b) layer decay: ``timm.optim.param_groups_layer_decay(model, 0.1, layer_decay=0.75, ...)`` (``lr_scale``) vs
    ``paramwise.param_groups(model, [no_decay(), layer_decay(0.75)], lr=1.0, weight_decay=0.1)`` (``lr``).

Parameters are matched by tensor identity (``id(p)``) between the two tools' groups.  Models are built
with ``pretrained=False`` on the meta device when timm allows it, else on the CPU, at small sizes.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore")

import timm  # noqa: E402
import timm.optim  # noqa: E402

import paramwise  # noqa: E402

COLLAPSE = False  # --collapse: one line per name pattern (indices -> #) instead of per parameter
WD = 0.1
RATE = 0.75
SMALL = {"img_size": 64}

# (name, create_model kwargs, compare layer decay too)
MODELS: list[tuple[str, dict, bool]] = [
    ("vit_tiny_patch16_224", SMALL, True),
    ("deit3_small_patch16_224", SMALL, True),
    ("beit_base_patch16_224", SMALL, True),
    ("cait_xxs24_224", SMALL, False),
    ("xcit_nano_12_p16_224", SMALL, False),
    ("convnext_atto", {}, True),
    ("poolformer_s12", {}, False),
    ("poolformerv2_s12", {}, False),
    ("caformer_s18", {}, False),
    ("fastvit_t8", {}, False),
    ("nf_resnet26", {}, False),
    ("eca_nfnet_l0", {}, False),
    ("swin_tiny_patch4_window7_224", {}, True),
    ("resnet18", {}, True),
    ("efficientnet_b0", {}, True),
]


def build(name: str, kwargs: dict) -> tuple[torch.nn.Module, str]:
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs), "meta"
    except Exception:  # some models compute python floats from tensors (drop-path schedules, ...)
        return timm.create_model(name, pretrained=False, **kwargs), "cpu"


def nwd_list(model: torch.nn.Module) -> set:
    f = getattr(model, "no_weight_decay", None)
    return set(f()) if callable(f) else set()


def by_id(groups: list[dict], key: str, default: float | None = None) -> dict[int, float]:
    out: dict[int, float] = {}
    for g in groups:
        for p in g["params"]:
            if id(p) in out:
                raise RuntimeError(f"parameter in two groups ({key})")
            out[id(p)] = g.get(key, default)
    return out


def pw_groups(model, rules, **defaults):
    try:
        return paramwise.param_groups(model, rules, **defaults)
    except paramwise.ParamwiseError as e:  # a rule that matches nothing on this model
        print(f"    (paramwise strict failed: {str(e).splitlines()[0][:160]}; retrying strict=False)")
        return paramwise.param_groups(model, rules, strict=False, **defaults)


def exp_of(x: float) -> str:
    return f"{math.log(x) / math.log(RATE) + 0.0:.3g}" if x and x > 0 else "-"


class Lines:
    """Prints one line per mismatch, or (with --collapse) one per group: for no-decay a name pattern with
    the indices replaced by #, for layer decay a (timm exponent, paramwise exponent) pair with the common
    name prefix, the count and the first and last names."""

    def __init__(self) -> None:
        self.c: dict = {}

    def add(self, name: str, line: str, key: str, by_pattern: bool = True) -> None:
        if COLLAPSE:
            k = (re.sub(r"\.\d+(?=\.|$)", ".#", name), key) if by_pattern else ("", key)
            self.c.setdefault(k, []).append(name)
        else:
            print(line)

    def flush(self, tag: str) -> None:
        for (pat, key), names in self.c.items():
            if not pat:
                pre = names[0].split(".")
                for n in names[1:]:
                    q = n.split(".")
                    i = 0
                    while i < min(len(pre), len(q)) and pre[i] == q[i]:
                        i += 1
                    pre = pre[:i]
                pat = ".".join(pre) + ".*" if pre else "*"
                key += f"  [{names[0]} .. {names[-1]}]" if len(names) > 1 else f"  [{names[0]}]"
            print(f"  {tag}  {pat:<48} x{len(names):<3} {key}")
        self.c.clear()


def _short(xs: list, k: int = 4) -> str:
    return str(xs) if len(xs) <= k else f"{xs[:k]} + {len(xs) - k} more"


def compare(name: str, kwargs: dict, do_ld: bool) -> tuple[int | None, int | None]:
    t0 = time.perf_counter()
    model, dev = build(name, kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    nwd = nwd_list(model)
    print(f"== {name} ({dev}{', ' + str(kwargs) if kwargs else ''}; "
          f"{len(names)} tensors; no_weight_decay()={_short(sorted(nwd))})")

    # (a) no-decay
    t_wd = by_id(timm.optim.param_groups_weight_decay(model, weight_decay=WD, no_weight_decay_list=nwd),
                 "weight_decay")
    p_wd = by_id(pw_groups(model, [paramwise.no_decay()], weight_decay=WD), "weight_decay", WD)
    nd = 0
    out = Lines()
    for i, n in names.items():
        a, b = t_wd.get(i), p_wd.get(i)
        if a is None or b is None or not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0):
            nd += 1
            side = "timm decays" if (a or 0) > 0 else "paramwise decays"
            if a is None or b is None:
                side = f"missing in {'timm' if a is None else 'paramwise'}"
            shape = tuple(model.get_parameter(n).shape)
            out.add(n, f"  no-decay  {n:<48} {str(shape):<18} timm wd={a} paramwise wd={b}  -> {side}",
                    f"ndim {len(shape)}: {side}")
    out.flush("no-decay")

    # (b) layer decay
    ld = None
    if do_ld:
        ld = 0
        tg = timm.optim.param_groups_layer_decay(model, weight_decay=WD, layer_decay=RATE,
                                                 no_weight_decay_list=nwd)
        t_lr = by_id(tg, "lr_scale", 1.0)
        p_lr = by_id(pw_groups(model, [paramwise.no_decay(), paramwise.layer_decay(RATE)],
                               lr=1.0, weight_decay=WD), "lr", 1.0)
        for i, n in names.items():
            a, b = t_lr.get(i), p_lr.get(i)
            if a is None or b is None or not math.isclose(a, b, rel_tol=1e-6):
                ld += 1
                out.add(n, f"  layer-lr  {n:<48} timm scale={a if a is None else f'{a:.6g}'} "
                        f"(exp {exp_of(a)})  paramwise lr={b if b is None else f'{b:.6g}'} (exp {exp_of(b)})",
                        f"exp timm {exp_of(a)} vs paramwise {exp_of(b)}", by_pattern=False)
        out.flush("layer-lr")
    print(f"  [{time.perf_counter() - t0:.1f}s]")
    return nd, ld


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="subset of model names (default: all)")
    ap.add_argument("--collapse", action="store_true",
                    help="one line per name pattern (numeric indices -> #) with a count, not per parameter")
    args = ap.parse_args(argv)
    global COLLAPSE
    COLLAPSE = args.collapse
    torch.set_num_threads(2)
    todo = [m for m in MODELS if not args.models or m[0] in args.models]
    print(f"timm {timm.__version__}, torch {torch.__version__}, paramwise from {paramwise.__file__}")
    summary = []
    for name, kw, do_ld in todo:
        try:
            nd, ld = compare(name, kw, do_ld)
            summary.append(f"{name}: no-decay diffs {nd}, layer-decay diffs {'n/a' if ld is None else ld}")
        except Exception as e:  # keep going; report the failure in the summary
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            print(f"  ERROR {msg}")
            summary.append(f"{name}: ERROR {msg}")
    print("\n== summary")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
