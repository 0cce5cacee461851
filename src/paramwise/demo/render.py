"""Turn the experiments' numbers into a plain-text table, plain sentences and one PNG figure.

Every sentence is computed from the results (thresholds below), never written in advance::

    >>> print(bias_findings(results))                       # doctest: +SKIP
    clusters: at λ=0.1, decaying every parameter cut training accuracy from 94.3% to 74.3% ...
"""

from __future__ import annotations

from pathlib import Path

from .experiments import BIAS_MODES, L1_METHODS, NEAR_ZERO, BiasResult, GroupResult, L1Result

__all__ = ["bias_table", "bias_findings", "l1_table", "l1_findings", "group_table",
           "group_findings", "figure"]

#: A gap in accuracy below this many percentage points is reported as "no real difference".
SMALL_GAP = 1.0
_EVERY, _ONLY = list(BIAS_MODES)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _lam(x: float) -> str:
    return "0" if x == 0 else f"{x:g}"


def _grid(head: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: indent + "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(head), *(line(r) for r in rows)]).rstrip()


# ------------------------------------------------------------------------------- part 1
def bias_table(results: list[BiasResult]) -> str:
    out = []
    for r in results:
        head = ["λ", "every: train", "test", "weights only: train", "test"]
        rows = [[_lam(lam), _pct(r.train[_EVERY][i]), _pct(r.test[_EVERY][i]),
                 _pct(r.train[_ONLY][i]), _pct(r.test[_ONLY][i])]
                for i, lam in enumerate(r.lams)]
        out.append(f"  {r.task} ({r.about})\n{_grid(head, rows, '    ')}")
    return "\n".join(out)


def bias_findings(results: list[BiasResult]) -> list[str]:
    """One sentence per task: where excluding biases/norms helped, by how much, and where not."""
    out = []
    for r in results:
        gaps = [100 * (r.train[_ONLY][i] - r.train[_EVERY][i]) for i in range(len(r.lams))]
        tgaps = [100 * (r.test[_ONLY][i] - r.test[_EVERY][i]) for i in range(len(r.lams))]
        k = max(range(len(gaps)), key=lambda i: gaps[i])
        small = [_lam(lam) for lam, g in zip(r.lams, gaps) if abs(g) < SMALL_GAP]
        worse = [_lam(lam) for lam, g in zip(r.lams, gaps) if g <= -SMALL_GAP]
        if gaps[k] >= SMALL_GAP:
            s = (f"{r.task}: at λ={_lam(r.lams[k])}, decaying every parameter gave "
                 f"{_pct(r.train[_EVERY][k])} training accuracy against "
                 f"{_pct(r.train[_ONLY][k])} with {r.excluded} excluded "
                 f"({gaps[k]:+.1f} points; test {tgaps[k]:+.1f}) — the model underfits.")
            if small:
                s += f" At λ={', '.join(small)} the gap is under {SMALL_GAP:g} point."
            if worse:
                s += (f" At λ={', '.join(worse)} excluding them lowered training accuracy "
                      "instead.")
        elif worse:
            s = (f"{r.task}: excluding {r.excluded} from decay did not help here; it lowered "
                 f"training accuracy by up to {-min(gaps):.1f} points (λ={', '.join(worse)})")
            s += (f", and changed it by under {SMALL_GAP:g} point at λ={', '.join(small)}."
                  if small else ".")
        else:
            s = (f"{r.task}: no real difference — excluding {r.excluded} from decay changed "
                 f"training accuracy by at most {max(map(abs, gaps)):.1f} points and test "
                 f"accuracy by at most {max(map(abs, tgaps)):.1f} at every λ tried, so here "
                 "the biases' decay costs little.")
        out.append(s)
    return out


# ------------------------------------------------------------------------------- part 2
def l1_table(r: L1Result) -> str:
    head = ["optimizer", "L1 as", "λ", "test acc", "exact zeros"]
    rows = []
    for opt_label, acc in r.baseline.items():
        rows.append([opt_label, "(none)", "0", _pct(acc), ""])
        for method in L1_METHODS:
            for i, lam in enumerate(r.lams):
                rows.append([opt_label, method, _lam(lam), _pct(r.acc[opt_label, method][i]),
                             _pct(r.zeros[opt_label, method][i])])
    return _grid(head, rows)


def l1_findings(r: L1Result) -> list[str]:
    out = []
    for opt_label in r.baseline:
        loss_z = r.zeros[opt_label, "loss term"]
        near = max(r.near[opt_label, "loss term"])
        prox_z = r.zeros[opt_label, "proximal"]
        k = max(range(len(r.lams)), key=lambda i: prox_z[i])
        drop = 100 * (r.baseline[opt_label] - r.acc[opt_label, "proximal"][k])
        if max(loss_z) == 0:
            s = f"{opt_label}: with L1 as a loss term no weight was exactly zero at any λ"
        else:
            j = max(range(len(r.lams)), key=lambda i: loss_z[i])
            s = (f"{opt_label}: with L1 as a loss term at most {_pct(loss_z[j])} of the "
                 f"weights were exactly zero (λ={_lam(r.lams[j])})")
        s += (f" (up to {_pct(near)} were merely within {NEAR_ZERO:g} of it); proximal l1 "
              f"made up to {_pct(prox_z[k])} exactly zero (λ={_lam(r.lams[k])}) at test "
              f"accuracy {_pct(r.acc[opt_label, 'proximal'][k])}")
        s += (f", {drop:.1f} points below no L1." if drop >= SMALL_GAP
              else ", within a point of no L1.")
        out.append(s)
    return out


# ------------------------------------------------------------------------------- part 3
def group_table(r: GroupResult) -> str:
    head = ["λ", "pixels kept (of 64)", "test acc"]
    rows = [[_lam(lam), str(k), _pct(a)] for lam, k, a in zip(r.lams, r.kept, r.acc)]
    return _grid(head, rows)


def group_findings(r: GroupResult) -> list[str]:
    """Pixels kept per λ, the cheapest reduction within a point of accuracy, and where the
    removed pixels lie."""
    on = [(lam, k, a) for lam, k, a in zip(r.lams, r.kept, r.acc) if lam > 0]
    if not on:
        return ["no group lasso strength above 0 was tried."]
    s = ("group lasso kept " + " / ".join(str(k) for _, k, _ in on) + " of 64 pixels at λ = "
         + " / ".join(_lam(lam) for lam, _, _ in on) + " (test "
         + " / ".join(_pct(a) for _, _, a in on) + ").")
    if r.lams[0] == 0:
        base, n0 = r.acc[0], r.kept[0]
        s = f"Without it the first layer reads all {n0} pixels (test {_pct(base)}); " + s
        near = [(lam, k) for lam, k, a in on if k < n0 and 100 * (base - a) < SMALL_GAP]
        if near:
            lam, k = min(near, key=lambda t: t[1])
            s += (f" The smallest input set within {SMALL_GAP:g} point of that accuracy: "
                  f"{k} pixels (λ={_lam(lam)}).")
        elif any(k < n0 for _, k, _ in on):
            s += f" Every λ that removed pixels also cost {SMALL_GAP:g} point of accuracy or more."
        else:
            s += " No λ tried removed a pixel."
    mask = r.masks[-1]
    removed = [(i, j) for i in range(8) for j in range(8) if mask[i][j] == 0]
    if removed:
        ring = sum(1 for i, j in removed if i in (0, 7) or j in (0, 7))
        s += (f" At λ={_lam(r.lams[-1])}, {ring} of the {len(removed)} removed pixels lie on "
              "the image's outer ring (28 of the 64 pixels).")
    return [s]


# ------------------------------------------------------------------------------- figure
def _legend_below_data(ax, series: list[list[float]]) -> None:
    """Put the legend in the lower left, in a band kept free of data: the y-range is stretched
    downwards so every point lies in the top 60% of the axes, whatever the run measured (a
    legend placed over the data hid points)."""
    ys = [y for s in series for y in s]
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or max(abs(hi), 1e-3) * 0.05
    ax.set_ylim(lo - 0.62 * span, hi + 0.05 * span)
    ax.legend(fontsize=7, loc="lower left")


def figure(path: str | Path, bias: list[BiasResult] | None, l1: L1Result | None,
           group: GroupResult | None) -> Path:
    """Draw whatever parts ran into one PNG at ``path`` (matplotlib's object API, Agg)."""
    path = Path(path)
    draw(bias, l1, group).savefig(path, dpi=110, bbox_inches="tight")  # PNG by the suffix
    return path


def draw(bias: list[BiasResult] | None, l1: L1Result | None, group: GroupResult | None):
    """The demo's figure (a ``matplotlib.figure.Figure``, no pyplot) for whatever parts ran."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend or state is touched
    from matplotlib.gridspec import GridSpec

    top = [*(bias or []), *([l1] if l1 else [])]
    n_top = max(len(top), 1)
    n_img = len(group.lams) if group else 0
    rows = (1 if top else 0) + (1 if group else 0)
    fig = Figure(figsize=(5.0 * max(n_top, 3), 4.2 * max(rows, 1)))
    gs = GridSpec(max(rows, 1), n_top, figure=fig, hspace=0.5, wspace=0.3)
    row = 0
    if top:
        for i, r in enumerate(bias or []):
            ax = fig.add_subplot(gs[row, i])
            x = range(len(r.lams))
            for mode, color in zip(BIAS_MODES, ("tab:red", "tab:blue")):
                ax.plot(x, r.train[mode], "-o", color=color, label=f"decay on {mode}: train")
                ax.plot(x, r.test[mode], "--s", color=color, alpha=0.7,
                        label=f"decay on {mode}: test")
            ax.set_xticks(list(x), [_lam(v) for v in r.lams])
            ax.set_xlabel("weight decay λ (SGD)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"1 · {r.task}: weight decay on every\nparameter vs. on weights only",
                         fontsize=10)
            _legend_below_data(ax, [*r.train.values(), *r.test.values()])
            ax.grid(alpha=0.3)
        if l1:
            ax = fig.add_subplot(gs[row, len(bias or [])])
            styles = {"loss term": "o", "proximal": "^"}
            colors = {"SGD": "tab:green", "Adam": "tab:purple"}
            for (opt_label, method), accs in l1.acc.items():
                ax.plot([100 * z for z in l1.zeros[opt_label, method]], accs,
                        styles[method] + ("--" if method == "loss term" else "-"),
                        color=colors.get(opt_label), label=f"{opt_label}, L1 as {method}")
            ax.set_xlabel("weights exactly 0 (%)")
            ax.set_ylabel("test accuracy")
            ax.set_title("2 · digits: L1 as a loss term vs.\nproximal L1", fontsize=10)
            _legend_below_data(ax, list(l1.acc.values()))
            ax.grid(alpha=0.3)
        row += 1
    if group:
        holder = fig.add_subplot(gs[row, :])
        holder.axis("off")
        holder.set_title("3 · digits: group lasso on the first layer's input columns — each "
                         "pixel's column norm (scaled per image); grey = pixel removed",
                         fontsize=10, pad=28)
        sub = gs[row, :].subgridspec(1, max(n_img, 4), wspace=0.3)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d0d0d0")
        for i, (lam, mask, k, a) in enumerate(zip(group.lams, group.masks, group.kept,
                                                  group.acc)):
            ax = fig.add_subplot(sub[0, i])
            img = np.ma.masked_equal(np.asarray(mask, dtype=float), 0.0)
            ax.imshow(img, cmap=cmap, vmin=0, vmax=float(img.max()) if k else 1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"λ={_lam(lam)}\n{k}/64 pixels, test {_pct(a)}", fontsize=9)
    return fig
