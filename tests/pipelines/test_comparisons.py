"""Intervals and paired comparisons in the evaluation and its report, on synthetic features whose answer is known:
a 'guided' cell whose features move towards the reference and whose classes are right is resolved better than the
unguided one; two cells drawn alike are not distinguishable; the report and the plots carry the intervals."""

import numpy as np
import pytest

from components.config import EvaluateConfig
from pipelines.stages.comparisons import format_comparisons
from pipelines.stages.evaluate import EvaluateJob, reference_stats, score_cells
from pipelines.stages.evaluate_inputs import Source
from pipelines.stages.plots import tradeoff_figures
from pipelines.stages.report import format_table

N, M, CLASSES = 80, 200, 4


def _cell(scale: float) -> dict:
    key = f"ddim10/scale_{scale:g}"
    return {"cell": key, "sampler": "ddim10", "guidance_method": "classifier", "guidance_scale": scale,
            "guidance_interval": "all"}


@pytest.fixture(scope="module")
def evaluated():
    """Scale 0: features offset from the reference and classes at chance; scale 4: on the reference, right classes;
    scale 1: drawn as scale 0 is, from other noise (same seeds: the cells share the base noise, as the grid does)."""
    rng = np.random.default_rng(0)
    reference = {"inception.pool": rng.normal(size=(M, 24)), "inception.spatial": rng.normal(size=(M, 12)),
                 "evaluator.pool": rng.normal(size=(M, 6)), "evaluator.probs": rng.dirichlet(np.ones(CLASSES), M)}
    labels = rng.integers(0, CLASSES, N)
    shared = {k: rng.normal(size=(N, v.shape[1])) for k, v in reference.items() if k != "evaluator.probs"}
    samples, features = {}, {}
    for scale, offset, right in ((0.0, 1.0, 0.0), (1.0, 1.0, 0.0), (4.0, 0.0, 0.9)):
        cell = _cell(scale)
        samples[cell["cell"]] = Source(cell["cell"], "npz", [], [N], (8, 8, 3), labels, cell=cell)
        probs = rng.dirichlet(np.ones(CLASSES), N)
        probs[np.arange(N), labels] += right * 10
        noise = 0.3 * rng.normal(size=(N, 24)) if scale == 1.0 else 0.0
        features[cell["cell"]] = {
            "inception.pool": shared["inception.pool"] + offset + noise,
            "inception.spatial": shared["inception.spatial"], "evaluator.pool": shared["evaluator.pool"] + offset,
            "evaluator.probs": probs / probs.sum(1, keepdims=True)}
    job = EvaluateJob(samples="", reference="", config=EvaluateConfig(bootstrap=100, champion_metric="fid"))
    return score_cells(job, samples, reference_stats(reference), features)


def test_every_metric_has_an_interval_around_its_value(evaluated):
    for row in evaluated.rows:
        for metric in ("fid", "sfid", "precision", "recall", "kid", "evaluator_fid", "score", "accuracy"):
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], (row["cell"], metric)
        assert row["kid_std"] > 0 and row["fid_hi"] > row["fid_lo"]


def test_the_guided_cell_is_resolved_better_and_the_alike_ones_are_not(evaluated):
    compared = evaluated.comparisons
    (line,) = compared["lines"]
    assert line["best_scale"] == 4.0
    pairs = {p["a"]: p for p in line["pairs"]}
    assert all(p["resolved"] and p["delta"] > 0 for p in pairs.values())  # scale 0 and 1 worse than 4, resolved
    claim = {p["metric"]: p for p in compared["claim"] if p["what"].startswith("best scale")}
    assert claim["fid"]["resolved"] and claim["fid"]["delta"] < 0
    assert claim["accuracy"]["resolved"] and claim["accuracy"]["delta"] > 0.5
    cells = evaluated.cells
    alike = cells["ddim10/scale_1"].differences(cells["ddim10/scale_0"], 0.9)["sfid"]  # the same spatial features
    assert alike.delta == 0 and not alike.resolved


def test_the_report_and_the_plots_carry_the_intervals(evaluated):
    table = format_table(evaluated.rows)
    assert "| fid |" in table.splitlines()[0] and "[" in table.splitlines()[2]
    text = format_comparisons(evaluated.comparisons, evaluated.rows)
    assert "ddim10: best fid at scale 4" in text and "claim, ddim10, best scale 4 vs unguided: fid -" in text
    figures = tradeoff_figures(evaluated.rows)
    errorbars = [c for c in figures["plots/fid_vs_scale.png"].axes[0].containers]
    assert errorbars, "no error bars on fid_vs_scale"
    (bars,) = errorbars
    segments = bars.lines[2][0].get_segments()  # one vertical bar per scale: from fid_lo to fid_hi
    rows = sorted(evaluated.rows, key=lambda r: r["guidance_scale"])
    assert [tuple(np.round(s[:, 1], 6)) for s in segments] == [(round(r["fid_lo"], 6), round(r["fid_hi"], 6))
                                                                for r in rows]
