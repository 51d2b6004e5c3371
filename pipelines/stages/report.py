"""Reporting of the evaluation stage: the metrics table as text, and in MLflow (one run per grid cell, a table and
the trade-off plots on the parent run)."""

import math
import os
import platform

import torch

from components.config.grid import ALL_LEVELS, metric_name
from pipelines.infra import tags
from pipelines.infra.tracking import Tracker
from pipelines.stages.comparisons import format_comparisons
from pipelines.stages.plots import lines_of, tradeoff_figures

COORDINATES = ("sampler", "guidance_method", "guidance_scale", "guidance_interval", "network_evals",
               "classifier_passes", "guide_evals", "seconds_per_sample", "num_samples")
# what users compare, in the table's order: each shown with its interval where the evaluation made one
METRICS = ("fid", "precision", "recall", "accuracy", "kid", "sfid", "evaluator_fid", "evaluator_precision",
           "evaluator_recall", "evaluator_kid", "score")


def _number(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:g}" if value == int(value) else f"{value:.4g}"
    return str(value)


def with_interval(row: dict, metric: str) -> str:
    value = _number(row.get(metric, math.nan))
    if f"{metric}_lo" in row:
        return f"{value} [{_number(row[f'{metric}_lo'])}, {_number(row[f'{metric}_hi'])}]"
    return value


def format_table(rows: list[dict]) -> str:
    """A Markdown table of the columns present, one line per cell, grouped by sampler (the rows' order); each metric
    with its interval [lo, hi] where the evaluation made one."""
    columns = [c for c in COORDINATES if c in rows[0]]
    if all(row.get("guidance_interval", ALL_LEVELS) == ALL_LEVELS for row in rows):
        columns = [c for c in columns if c != "guidance_interval"]  # one interval: the column says nothing
    if all(row.get("guidance_method", "classifier") == "classifier" for row in rows):
        columns = [c for c in columns if c != "guidance_method"]
    if not any(row.get("guide_evals") for row in rows):  # no autoguidance in the grid
        columns = [c for c in columns if c != "guide_evals"]
    measured = [m for m in METRICS if m in rows[0]]
    lines = ["| " + " | ".join(columns + measured) + " |", "|" + "---|" * (len(columns) + len(measured))]
    lines += ["| " + " | ".join([_number(row.get(c, math.nan)) for c in columns]
                                + [with_interval(row, m) for m in measured]) + " |" for row in rows]
    return "\n".join(lines)


def scale_label(scale: float) -> str:
    return "unknown" if math.isnan(scale) else f"{scale:g}"


def numbers(row: dict) -> dict:
    """The numeric entries of a row (MLflow metrics); the sampler and interval strings are params. A cell guided at
    every noise level has no interval bounds to plot ("all" is not a number)."""
    drop = ("interval_lo", "interval_hi") if row.get("guidance_interval", ALL_LEVELS) == ALL_LEVELS else ()
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in drop}


def log_evaluation(job, result, log=print):
    """Metrics into each cell's run (the sampling stage's child runs when given, else new child runs of an
    "evaluate" parent); the table and plots onto the parent run."""
    tracker = Tracker(job.tracking_uri)
    parent = job.parent_run_id or tracker.start_run(job.experiment, "evaluate", tags={tags.STAGE: "evaluate"})
    params = {"reference": job.reference, "features": job.config.features, "evaluator": job.evaluator or "",
              "num_reference": job.config.num_reference, "samples": job.samples,
              "inception_precision": job.config.inception_precision}
    earlier = {} if job.cell_run_ids else tracker.children_by_tag(job.experiment, parent, tags.CELL)
    for row in result.rows:
        run_id = job.cell_run_ids.get(row["cell"])
        if run_id is None:  # this stage's own run of the cell: new, or an earlier attempt's (a resumed stage)
            run_id = earlier.get(row["cell"])
            if run_id is None:
                run_id = tracker.start_run(job.experiment, f"evaluate-{row['cell']}", parent,
                                           {tags.STAGE: "evaluate", tags.CELL: row["cell"]})
            else:
                tracker.reopen(run_id)
            cell = {k: v for k, v in row.items() if k in ("sampler", "guidance_method", "guidance_interval")}
            tracker.log_params(run_id, {"guidance_scale": scale_label(row["guidance_scale"]), **cell, **params})
            tracker.end_run(run_id)
        # the coordinates too, numbers to sort and plot by, where the sampling run has not logged them already
        tracker.log_new_metrics(run_id, numbers(row), step=0)
        result.run_ids[row["cell"]] = run_id
    tracker.log_params(parent, {f"evaluate.{k}": v for k, v in params.items()})
    figures = log_tradeoff(tracker, parent, result.rows)
    if result.comparisons is not None:
        tracker.log_dict(parent, result.comparisons, "evaluation/comparisons.json")
    if job.parent_run_id is None:
        tracker.end_run(parent)
    result.parent_run_id = parent
    log(f"MLflow: metrics of {len(result.rows)} cells, table and {figures} plots under run {parent} at "
        f"{tracker.uri}")
    return result


def log_summary(tracker, run_id: str, rows: list[dict], champion: dict, comparisons: dict | None = None) -> None:
    """The trade-off at a glance on the pipeline run: the table, the plots, what the grid resolves, and each metric
    users compare as one curve along the scales, with its interval's bounds: `<metric>_by_scale` (and `_lo` / `_hi`)
    at step i = the i-th scale in increasing order of the champion's sampler and method (MLflow steps are integers:
    the param `scales_by_step` says which scale each step is); with several lines (samplers, methods),
    `<metric>_by_scale/<sampler>[-<method>]` the same for each."""
    log_tradeoff(tracker, run_id, rows, champion)
    if comparisons is not None:
        tracker.log_dict(run_id, comparisons, "evaluation/comparisons.json")
    lines = lines_of(rows)
    headline = champion["sampler"] + ("" if champion.get("guidance_method", "classifier") == "classifier"
                                      else f" {champion['guidance_method']}")
    if headline in lines:
        tracker.log_params(run_id, {"scales_by_step": ",".join(f"{r['guidance_scale']:g}" for r in lines[headline])})
    for name, line in lines.items():
        suffixes = ([""] if name == headline else []) + \
            ([f"/{metric_name(name.replace(' ', '-'))}"] if len(lines) > 1 else [])
        for i, row in enumerate(line):
            values = {k: row[k] for m in METRICS for k in (m, f"{m}_lo", f"{m}_hi") if k in row}
            tracker.log_new_metrics(run_id, {f"{k}_by_scale{s}": v for k, v in values.items() for s in suffixes},
                                    step=i)  # new: a resumed pipeline publishes a finished evaluate stage again


def log_tradeoff(tracker, run_id: str, rows: list[dict], champion: dict | None = None) -> int:
    """The metrics table and the trade-off plots as artifacts of `run_id`; returns the number of plots."""
    tracker.log_table(run_id, rows, "evaluation/metrics_by_cell.json")
    figures = tradeoff_figures(rows, champion["guidance_scale"] if champion else None)
    for name, figure in figures.items():
        tracker.log_figure(run_id, figure, name)
    return len(figures)


def machine() -> str:


    gpus = torch.cuda.device_count()
    accel = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "no GPU"
    return f"{platform.machine()} {os.cpu_count()} CPUs, {accel}, torch {torch.__version__}"


def run_report(run_id: str, preset_name: str, rows: list[dict], seconds: float, cluster: str,
               stage_times: dict, comparisons: dict | None = None) -> str:
    """The Markdown summary `adm run` writes beside its outputs and logs on the pipeline run."""
    resolved = f"\n\n{format_comparisons(comparisons, rows)}" if comparisons else ""
    return (f"# adm run {run_id}\n\npreset `{preset_name}`; driver machine: {machine()}; Ray: {cluster}; "
            f"wall time {seconds / 60:.1f} min\n\n{format_table(rows)}{resolved}\n\n"
            f"{format_stage_times(stage_times)}\n")


def format_stage_times(stage_times: dict) -> str:
    """One line: where the pipeline's wall time went, stage by stage (reused stages cost only their lookup)."""
    parts = [f"{name} {seconds:.0f} s" + ("" if how == "ran" else f" ({how})")
             for name, (seconds, how) in stage_times.items()]
    return "stage wall times: " + ", ".join(parts)
