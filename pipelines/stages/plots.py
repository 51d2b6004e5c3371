"""The fidelity/diversity trade-off over the grid of cells as matplotlib figures (Dhariwal & Nichol 2021, Fig. 4),
with error bars where the evaluation made intervals,
one line per sampler and guidance method: FID vs scale, precision vs recall along the scales, score vs FID; and what
compute buys: FID vs network evaluations per sample, one line per solver family and method (ddim10, ddim25, ... form
one line), at the champion scale; FID vs classifier passes per sample at that scale when the grid has guidance
intervals. Rows are the evaluation table, one dict per cell."""

import math

from matplotlib.figure import Figure

from components.config.grid import ALL_LEVELS, parse_sampler

METRIC_SETS = (("fid", "precision", "recall"), ("evaluator_fid", "evaluator_precision", "evaluator_recall"))


def _series(rows, key):
    return [row.get(key, math.nan) for row in rows]


def _line(ax, xs, ys, label, xerr=None, yerr=None) -> None:
    """A line with markers and, where there are intervals, their error bars in the line's colour."""
    (line,) = ax.plot(xs, ys, marker="o", label=label or None)
    if xerr is not None or yerr is not None:
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=line.get_color(), capsize=3)


def _errors(rows, key):
    """matplotlib's [below, above] error bars of `key` from its interval (`key`_lo, `key`_hi), or None without one."""
    if not all(f"{key}_lo" in r for r in rows):
        return None
    return [[r[key] - r[f"{key}_lo"] for r in rows], [r[f"{key}_hi"] - r[key] for r in rows]]


def _annotate(ax, xs, ys, labels):
    """Labels beside the points, alternating above and below so that neighbours do not overlap."""
    for i, (x, y, label) in enumerate(zip(xs, ys, labels)):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 6 if i % 2 == 0 else -12), fontsize=8)


def series(row: dict) -> str:
    """The line a row belongs to: its sampler, and its guidance method unless that is the classifier's."""
    method = row.get("guidance_method", "classifier")
    return row.get("sampler", "") + ("" if method == "classifier" else f" {method}")


def lines_of(rows) -> dict:
    """{line (sampler, method): its rows guided at every noise level, by increasing scale}; rows of unknown sampler
    as "". A sampler's scale-0 cell (unguided: the same for every method) starts each of its methods' lines."""
    out, unguided = {}, {}
    for row in rows:
        if row.get("guidance_interval", ALL_LEVELS) != ALL_LEVELS:
            continue
        if row.get("guidance_scale") == 0:
            unguided[row.get("sampler", "")] = row
        out.setdefault(series(row), []).append(row)
    for line in out.values():
        start = unguided.get(line[0].get("sampler", ""))
        if start is not None and start not in line:
            line.append(start)
    return {k: sorted(v, key=lambda r: r["guidance_scale"]) for k, v in out.items()}


def _figure():
    """A figure of matplotlib's object API: no pyplot, so no global figure list to close and no GUI backend."""
    fig = Figure(figsize=(6.4, 4.8))
    return fig, fig.subplots()


def _scale_axis(ax, rows) -> None:
    # scales grow geometrically (0, 1, 2, 4, ... 64): symlog keeps 0 and spreads the small ones out
    ax.set_xscale("symlog", linthresh=1.0)
    ticks = sorted({s for s in _series(rows, "guidance_scale") if math.isfinite(s)})  # NaN: scale unknown
    ax.set_xticks(ticks, [f"{s:g}" for s in ticks], fontsize=8)


def tradeoff_figures(rows: list[dict], champion_scale: float | None = None) -> dict:
    """{artifact file name: figure} for whichever feature sets the rows carry."""
    lines = lines_of(rows)
    figures = {}
    for fid, precision, recall in METRIC_SETS:
        if fid not in rows[0]:
            continue
        prefix = "" if fid == "fid" else "evaluator_"
        fig, ax = _figure()
        for sampler, line in lines.items():
            _line(ax, _series(line, "guidance_scale"), _series(line, fid), sampler, yerr=_errors(line, fid))
        _scale_axis(ax, rows)
        ax.set(xlabel="guidance scale", ylabel=fid, title=f"{fid} vs guidance scale")
        _legend(ax, lines)
        figures[f"plots/{prefix}fid_vs_scale.png"] = fig
        if precision in rows[0]:
            figures[f"plots/{prefix}precision_vs_recall.png"] = _frontier(lines, precision, recall)
        if "score" in rows[0]:
            figures[f"plots/score_vs_{fid}.png"] = _score_vs_fid(lines, fid)
        if "network_evals" in rows[0] and champion_scale is not None:
            figures[f"plots/{prefix}fid_vs_network_evals.png"] = _fid_vs_evals(rows, fid, champion_scale)
            if any(r.get("guidance_interval", ALL_LEVELS) != ALL_LEVELS for r in rows):
                figures[f"plots/{prefix}fid_vs_classifier_passes.png"] = _fid_vs_passes(rows, fid, champion_scale)
    return figures


def _legend(ax, lines) -> None:
    if len(lines) > 1:
        ax.legend(fontsize=8)


def _frontier(lines, precision, recall):
    fig, ax = _figure()
    for sampler, line in lines.items():
        ps, rs = _series(line, precision), _series(line, recall)
        _line(ax, rs, ps, sampler, xerr=_errors(line, recall), yerr=_errors(line, precision))
        _annotate(ax, rs, ps, [f"s={s:g}" for s in _series(line, "guidance_scale")])
    ax.set(xlabel="recall", ylabel="precision", title=f"{precision} vs {recall} along the scale grid")
    _legend(ax, lines)
    return fig


def _score_vs_fid(lines, fid):
    fig, ax = _figure()
    for sampler, line in lines.items():
        fs, ss = _series(line, fid), _series(line, "score")
        ax.plot(fs, ss, marker="o", label=sampler or None)
        _annotate(ax, fs, ss, [f"s={s:g}" for s in _series(line, "guidance_scale")])
    ax.set(xlabel=fid, ylabel="score", title=f"score vs {fid}")
    _legend(ax, lines)
    return fig


def _at_scale(rows, scale):
    return [r for r in rows if r.get("guidance_scale") == scale and "sampler" in r]


def _evals(row) -> float:
    return row["network_evals"] + row.get("guide_evals", 0.0)


def _fid_vs_evals(rows, fid, scale):
    """One line per sampler family (DDIM, DPM-Solver++(2M), Heun, DDPM) and guidance method, through its step
    counts: classifier-free guidance costs a second network evaluation per step, autoguidance an evaluation of its
    guide (a smaller network, counted here as one evaluation: an upper bound on its cost)."""
    fig, ax = _figure()
    families = {}
    for row in _at_scale(rows, scale):
        if row.get("guidance_interval", ALL_LEVELS) == ALL_LEVELS:
            method = row.get("guidance_method", "classifier")
            kind = parse_sampler(row["sampler"]).kind + ("" if method == "classifier" else f" {method}")
            families.setdefault(kind, []).append(row)
    for kind, line in families.items():
        line = sorted(line, key=_evals)
        xs, ys = [_evals(r) for r in line], _series(line, fid)
        ax.plot(xs, ys, marker="o", label=kind)
        _annotate(ax, xs, ys, [r["sampler"] for r in line])
    ax.set(xlabel="network evaluations per sample (a guide's included)", ylabel=fid,
           title=f"{fid} vs compute at guidance scale {scale:g}")
    ax.legend(fontsize=8)
    return fig


def _fid_vs_passes(rows, fid, scale):
    """Per sampler, its guidance intervals at the champion scale: what skipping the classifier costs in FID."""
    fig, ax = _figure()
    by_sampler = {}
    for row in _at_scale(rows, scale):
        by_sampler.setdefault(series(row), []).append(row)
    for sampler, line in by_sampler.items():
        line = sorted(line, key=lambda r: r["classifier_passes"])
        xs, ys = _series(line, "classifier_passes"), _series(line, fid)
        ax.plot(xs, ys, marker="o", label=sampler)
        _annotate(ax, xs, ys, [r["guidance_interval"] for r in line])
    ax.set(xlabel="classifier passes per sample", ylabel=fid,
           title=f"{fid} vs guidance interval at scale {scale:g}")
    ax.legend(fontsize=8)
    return fig

