"""The fidelity/diversity trade-off along the guidance-scale grid as matplotlib figures (Dhariwal & Nichol 2021,
Fig. 4): FID vs scale, precision vs recall, score vs FID. Rows are the evaluation table, one dict per scale."""

import math

METRIC_SETS = (("fid", "precision", "recall"), ("evaluator_fid", "evaluator_precision", "evaluator_recall"))


def _series(rows, key):
    return [row.get(key, math.nan) for row in rows]


def _annotate(ax, xs, ys, scales):
    for x, y, s in zip(xs, ys, scales):
        ax.annotate(f"s={s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)


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
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot(scales, _series(rows, fid), marker="o")
        ax.set(xlabel="classifier scale", ylabel=fid.upper().replace("_", " "), title=f"{fid} vs guidance scale")
        figures[f"plots/{prefix}fid_vs_scale.png"] = fig
        if precision in rows[0]:
            fig, ax = plt.subplots(figsize=(5, 4))
            ps, rs = _series(rows, precision), _series(rows, recall)
            ax.plot(rs, ps, marker="o")
            _annotate(ax, rs, ps, scales)
            ax.set(xlabel="recall", ylabel="precision", title=f"{prefix}precision vs recall along the scale grid")
            figures[f"plots/{prefix}precision_vs_recall.png"] = fig
        if "score" in rows[0]:
            fig, ax = plt.subplots(figsize=(5, 4))
            fs, ss = _series(rows, fid), _series(rows, "score")
            ax.plot(fs, ss, marker="o")
            _annotate(ax, fs, ss, scales)
            ax.set(xlabel=fid, ylabel="score (evaluator)", title=f"score vs {fid}")
            figures[f"plots/score_vs_{fid}.png"] = fig
    return figures


def close(figures: dict) -> None:
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)
