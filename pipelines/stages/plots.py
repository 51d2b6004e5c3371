"""The fidelity/diversity trade-off along the guidance-scale grid as matplotlib figures (Dhariwal & Nichol 2021,
Fig. 4): FID vs scale, precision vs recall, score vs FID. Rows are the evaluation table, one dict per scale."""

import math

METRIC_SETS = (("fid", "precision", "recall"), ("evaluator_fid", "evaluator_precision", "evaluator_recall"))


def _series(rows, key):
    return [row.get(key, math.nan) for row in rows]


def _annotate(ax, xs, ys, scales):
    """Scale labels beside the points, alternating above and below so that neighbours do not overlap."""
    for i, (x, y, s) in enumerate(zip(xs, ys, scales)):
        ax.annotate(f"s={s:g}", (x, y), textcoords="offset points", xytext=(5, 6 if i % 2 == 0 else -12),
                    fontsize=8)


def tradeoff_figures(rows: list[dict]) -> dict:
    """{artifact file name: figure} for whichever feature sets the rows carry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = _series(rows, "guidance_scale")
    figures = {}
    for fid, precision, recall in METRIC_SETS:
        if fid not in rows[0]:
            continue
        prefix = "" if fid == "fid" else "evaluator_"
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        ax.plot(scales, _series(rows, fid), marker="o")
        # scales grow geometrically (0, 1, 2, 4, ... 64): symlog keeps 0 and spreads the small ones out
        ax.set_xscale("symlog", linthresh=1.0)
        ticks = [s for s in scales if math.isfinite(s)]  # NaN: samples of unknown scale (adm evaluate on files)
        ax.set_xticks(ticks, [f"{s:g}" for s in ticks], fontsize=8)
        ax.set(xlabel="guidance scale", ylabel=fid, title=f"{fid} vs guidance scale")
        figures[f"plots/{prefix}fid_vs_scale.png"] = fig
        if precision in rows[0]:
            fig, ax = plt.subplots(figsize=(6.4, 4.8))
            ps, rs = _series(rows, precision), _series(rows, recall)
            ax.plot(rs, ps, marker="o")
            _annotate(ax, rs, ps, scales)
            ax.set(xlabel="recall", ylabel="precision", title=f"{precision} vs {recall} along the scale grid")
            figures[f"plots/{prefix}precision_vs_recall.png"] = fig
        if "score" in rows[0]:
            fig, ax = plt.subplots(figsize=(6.4, 4.8))
            fs, ss = _series(rows, fid), _series(rows, "score")
            ax.plot(fs, ss, marker="o")
            _annotate(ax, fs, ss, scales)
            ax.set(xlabel=fid, ylabel="score", title=f"score vs {fid}")
            figures[f"plots/score_vs_{fid}.png"] = fig
    return figures


def close(figures: dict) -> None:
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
