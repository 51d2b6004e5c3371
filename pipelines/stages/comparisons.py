"""What the data resolves: intervals on every metric of every cell, and paired comparisons between cells.

Each cell's metrics are recomputed on random subsets of its samples (components/uncertainty.py: the delete-d
jackknife; one set of subsets for the whole grid), giving `<metric>_lo` / `<metric>_hi` at `evaluate.ci_level`.
Cells share seeds and labels (sample i of every cell has the same seed and label), so the difference of a metric
between two cells is estimated on the same subsets in both: paired, which removes what the cells have in common.
From those differences the report says, for each line of the grid (sampler, method), the best scale and the scales
not distinguishable from it; between methods at their best scales, which differences are resolved; and whether the
paper's claim holds here (guidance at its best scale against unguided on FID and accuracy; recall along the scales).
"""


import math

import scipy.stats
from threadpoolctl import threadpool_limits

from components import metrics, uncertainty
from components.config import HIGHER_IS_BETTER
from pipelines.stages.plots import lines_of

KID_SUBSET = 1000  # torch-fidelity's subset size: below it the whole-set estimate is reported (see kid_point)


def references(ref: dict, roots: dict) -> dict:
    """{feature set: uncertainty.Reference} of the reference statistics the evaluation holds (the covariance roots
    the point metrics computed, reused)."""
    out = {}
    for name in ("inception", "evaluator"):
        if f"{name}.mu" in ref:
            out[name] = uncertainty.Reference(ref[f"{name}.mu"], ref[f"{name}.sigma"], ref.get(f"{name}.features"),
                                              roots.get(f"{name}.sigma"))
    if "inception.mu_s" in ref:
        out["spatial"] = uncertainty.Reference(ref["inception.mu_s"], ref["inception.sigma_s"], None,
                                               roots.get("inception.sigma_s"))
    return out


def statistics(feats: dict, refs: dict, labels, subsample_size: int) -> dict:
    """{metric: statistic prepared for subsampling} of one cell, for the metrics its features and references allow;
    the names are the row's. Recall is left out when a subsample is too small to hold a sample's k nearest
    neighbours (a cell of a handful of samples): its point value stays in the row, without an interval."""
    out = {}
    if "inception.pool" in feats and "inception" in refs:
        out["fid"] = uncertainty.FrechetStatistic(feats["inception.pool"], refs["inception"])
        if refs["inception"].features is not None:
            out["precision"] = uncertainty.precision_statistic(feats["inception.pool"], refs["inception"])
            if subsample_size > refs["inception"].k:
                out["recall"] = uncertainty.RecallStatistic(feats["inception.pool"], refs["inception"])
            out["kid"] = uncertainty.KIDStatistic(feats["inception.pool"], refs["inception"])
    if "inception.spatial" in feats and "spatial" in refs:
        out["sfid"] = uncertainty.FrechetStatistic(feats["inception.spatial"], refs["spatial"])
    if "evaluator.pool" in feats and "evaluator" in refs:
        pool, ref = feats["evaluator.pool"], refs["evaluator"]
        out["evaluator_fid"] = uncertainty.FrechetStatistic(pool, ref)
        out["evaluator_precision"] = uncertainty.precision_statistic(pool, ref)
        if subsample_size > ref.k:
            out["evaluator_recall"] = uncertainty.RecallStatistic(pool, ref)
        out["evaluator_kid"] = uncertainty.KIDStatistic(pool, ref)
        out["score"] = uncertainty.ScoreStatistic(feats["evaluator.probs"])
        if labels is not None:
            out["accuracy"] = uncertainty.accuracy_statistic(feats["evaluator.probs"], labels)
    return out


def resample(feats: dict, refs: dict, labels, sub: uncertainty.Subsamples) -> uncertainty.ResampledCell:
    """One cell's replicates on the grid's subsets, on one BLAS thread (threaded BLAS spins on these small
    matrices: several times slower on 2 cores, bench/RESULTS.md)."""
    with threadpool_limits(1):
        return uncertainty.ResampledCell(statistics(feats, refs, labels, sub.indices.shape[1]), sub)


def kid_point(name: str, features, reference) -> dict:
    """KID of a cell (`name`: kid or evaluator_kid): torch-fidelity's mean and standard deviation (`<name>_std`) over
    100 subsets of 1000 where both sets are that large; else the unbiased estimate on the whole sets (subsets of all
    of a small cell would vary only the reference), whose standard error kid_std takes from its interval."""
    if min(len(features), len(reference)) >= KID_SUBSET:
        mean, std = metrics.kid(features, reference, num_subsets=100, subset_size=KID_SUBSET)
        return {name: mean, f"{name}_std": std}
    return {name: metrics.kid(features, reference, num_subsets=1, subset_size=None)[0]}


def kid_std(row: dict, cell: uncertainty.ResampledCell, level: float) -> dict:
    """The standard error of each whole-set KID of the row, from its subsampling interval."""
    intervals = cell.intervals(level)
    return {f"{name}_std": intervals[name].width / (2 * _z(level)) for name in ("kid", "evaluator_kid")
            if name in row and f"{name}_std" not in row and name in intervals}


def _z(level: float) -> float:
    return float(scipy.stats.norm.ppf((1 + level) / 2))


# where each metric can lie: a normal interval near the edge would reach past it (a recall of 1.02)
DOMAIN = {**{m: (0.0, 1.0) for m in ("precision", "recall", "accuracy", "evaluator_precision", "evaluator_recall")},
          **{m: (0.0, math.inf) for m in ("fid", "sfid", "evaluator_fid")}, "score": (1.0, math.inf)}


def interval_columns(cell: uncertainty.ResampledCell, level: float) -> dict:
    """<metric>_lo and <metric>_hi of every metric of the cell, at `level`, within the metric's domain (KID, an
    unbiased estimate, can be below 0)."""
    out = {}
    for name, interval in cell.intervals(level).items():
        low, high = DOMAIN.get(name, (-math.inf, math.inf))
        out[f"{name}_lo"], out[f"{name}_hi"] = max(interval.lo, low), min(interval.hi, high)
    return out


# --- paired comparisons ------------------------------------------------------------------------------------------
def _better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def _best(line: list, metric: str) -> dict:
    return min(line, key=lambda r: (-r[metric] if metric in HIGHER_IS_BETTER else r[metric]))


def paired(a: dict, b: dict, cells: dict, metric: str, level: float) -> dict:
    """metric(a) - metric(b) of two rows, paired, with its interval and whether it excludes 0."""
    d = cells[a["cell"]].differences(cells[b["cell"]], level)[metric]
    return {"a": a["cell"], "b": b["cell"], "metric": metric, "delta": d.delta, "lo": d.lo, "hi": d.hi,
            "resolved": d.resolved}


def compare(rows: list, cells: dict, metric: str, level: float) -> dict:
    """What the grid resolves at `level`, in `metric` (the champion metric) and accuracy:
    * lines: per sampler and method, the best scale and the scales not distinguishable from it (paired);
    * methods: per sampler, every pair of methods at their best scales;
    * claim: per line, the best scale against unguided (scale 0) in `metric` and accuracy, and recall at the
      largest scale against unguided;
    * closest: the method pair nearest to resolution, and about how many samples per cell would resolve it."""
    lines = {name: line for name, line in lines_of(rows).items() if all(metric in r for r in line)}
    out = {"metric": metric, "level": level, "lines": [], "methods": [], "claim": []}
    best = {}
    for name, line in lines.items():
        best[name] = top = _best(line, metric)
        others = [r for r in line if r is not top]
        pairs = [paired(r, top, cells, metric, level) for r in others]
        out["lines"].append({"line": name, "best_scale": top["guidance_scale"], "best": top[metric],
                             "indistinguishable": [r["guidance_scale"] for r, p in zip(others, pairs)
                                                   if not p["resolved"]], "pairs": pairs})
        out["claim"] += _claim(name, line, top, cells, metric, level)
    names = list(best)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if best[a].get("sampler") == best[b].get("sampler") and best[a] is not best[b]:
                out["methods"].append(paired(best[a], best[b], cells, metric, level))
    out["closest"] = _closest(out["methods"], rows, level)
    return out


def _claim(name: str, line: list, top: dict, cells: dict, metric: str, level: float) -> list:
    """Dhariwal & Nichol's trade-off on one line: guidance at its best scale against unguided sampling."""
    unguided = next((r for r in line if r["guidance_scale"] == 0), None)
    if unguided is None or top is unguided:
        return []
    what = f"best scale {top['guidance_scale']:g} vs unguided"
    # fidelity up (the metric, accuracy), and at that scale how much diversity it cost (recall: autoguidance claims
    # its gain keeps it, classifier guidance and CFG trade it)
    found = [{"line": name, "what": what, **paired(top, unguided, cells, m, level)}
             for m in dict.fromkeys((metric, "accuracy", "recall")) if m in top]
    largest = max(line, key=lambda r: r["guidance_scale"])
    if "recall" in largest and largest is not unguided:
        found.append({"line": name, "what": f"largest scale {largest['guidance_scale']:g} vs unguided",
                      **paired(largest, unguided, cells, "recall", level)})
    return found


def _closest(pairs: list, rows: list, level: float) -> dict | None:
    """The unresolved pair nearest to resolution (largest |delta| relative to its interval's width), and about how
    many samples per cell would resolve it (widths shrink like 1 / sqrt(N))."""
    open_pairs = [p for p in pairs if not p["resolved"] and p["delta"] != 0 and p["hi"] > p["lo"]]
    if not open_pairs:
        return None
    pair = max(open_pairs, key=lambda p: abs(p["delta"]) / (p["hi"] - p["lo"]))
    n = int(next(r["num_samples"] for r in rows if r["cell"] == pair["a"]))
    return {**pair, "num_samples": n,
            "samples_needed": uncertainty.samples_to_resolve(pair["hi"] - pair["lo"], n, pair["delta"], level)}


# --- in words ----------------------------------------------------------------------------------------------------
def _scale_of(cell_key: str, rows_by_cell: dict) -> str:
    row = rows_by_cell.get(cell_key, {})
    method = row.get("guidance_method", "classifier")
    scale = row.get("guidance_scale", math.nan)
    return (f"{row.get('sampler', cell_key)}" + ("" if method == "classifier" or scale == 0 else f" {method}")
            + f" s={scale:g}")


def format_difference(p: dict) -> str:
    verdict = "resolved" if p["resolved"] else "not resolved"
    return f"{p['metric']} {p['delta']:+.4g} [{p['lo']:+.4g}, {p['hi']:+.4g}], {verdict}"


def format_comparisons(comparisons: dict, rows: list | None = None) -> str:
    """What the grid resolves, in Markdown: the best scale of each line and the scales not distinguishable from it,
    the methods at their best scales against each other, the paper's claim, and the samples the closest open pair
    would need. Differences are paired (same seeds and labels), A minus B, with their interval at the level."""
    level, metric = comparisons["level"], comparisons["metric"]
    by_cell = {r["cell"]: r for r in rows or []}
    out = [f"What the data resolves at {level:.0%} (paired differences on the same seeds and labels, A minus B, "
           f"with their intervals):", ""]
    for line in comparisons["lines"]:
        same = ", ".join(f"{s:g}" for s in line["indistinguishable"]) or "none"
        out.append(f"- {line['line']}: best {metric} at scale {line['best_scale']:g} ({line['best']:.4g}); not "
                   f"distinguishable from it: {same}")
    for p in comparisons["methods"]:
        out.append(f"- {_scale_of(p['a'], by_cell)} vs {_scale_of(p['b'], by_cell)}: {format_difference(p)}")
    for p in comparisons["claim"]:
        out.append(f"- claim, {p['line']}, {p['what']}: {format_difference(p)}")
    closest = comparisons.get("closest")
    if closest:
        out.append(f"- the closest open comparison, {_scale_of(closest['a'], by_cell)} vs "
                   f"{_scale_of(closest['b'], by_cell)} ({format_difference(closest)}), would need about "
                   f"{closest['samples_needed']} samples per cell (now {closest['num_samples']}) to be resolved half "
                   "the time")
    return "\n".join(out)
