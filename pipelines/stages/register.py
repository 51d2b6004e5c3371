"""Register: the diffusion model and the noisy classifier (and a cascade's upsampler) become registered MLflow model
versions (`<prefix>-diffusion`, `<prefix>-classifier`, `<prefix>-upsampler`); the alias `champion` moves to the new
set only when the chosen metric (`evaluate.champion_metric`) in the champion cell (`evaluate.champion_sampler` at
`evaluate.champion_scale`) beats the current champion's.
All aliases move together, after every version exists, so a failure never leaves a mixed set."""

from components.config import AUTO, HIGHER_IS_BETTER, ConfigError, Preset, to_dict
from components.config.grid import grid_cells
from components.config.kinds import preset_kinds
from pipelines.infra import tags
from pipelines.infra.lineage import code_version, config_hash
from pipelines.infra.registry import CHAMPION, model_names, move_alias
from pipelines.infra.tracking import Tracker
from pipelines.stages.context import Stage, StageContext


def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    """What decides the register stage's outcome: the networks, their metrics, the champion policy and the names."""
    policy = {k: v for k, v in to_dict(ctx.preset.evaluate).items() if k.startswith("champion_")}
    return {"train": inputs["train"], "evaluate": inputs["evaluate"], "policy": policy,
            "names": model_names(ctx.prefix, preset_kinds(ctx.preset))}


def champion_cell(preset, rows: list | None = None) -> dict:
    """The cell whose metric decides the champion: evaluate.champion_sampler and champion_method (default the first
    of sample.samplers and guidance_methods) at evaluate.champion_scale, guided in the first of
    sample.guidance_intervals (at scale 0: the one unguided cell). With champion_scale=auto, the scale of that
    sampler, method and interval whose row in `rows` has the best champion metric."""
    sample, cfg = preset.sample, preset.evaluate
    sampler = cfg.champion_sampler or sample.samplers[0]
    method = cfg.champion_method or sample.guidance_methods[0]

    def cell_at(scale: float) -> dict:
        (cell,) = grid_cells([sampler], [scale], sample.guidance_intervals[:1], [method])
        return {"sampler": cell.sampler, "guidance_method": cell.method, "guidance_scale": float(scale),
                "guidance_interval": cell.interval_text}

    if cfg.champion_scale != AUTO:
        return cell_at(float(cfg.champion_scale))
    if rows is None:
        raise ValueError("evaluate.champion_scale=auto: the cell is chosen from the evaluation rows; pass them")
    scored = [(row, cell_at(s)) for s in sample.guidance_scales for row in [_row_of(rows, cell_at(s))] if row]
    if not scored or any(cfg.champion_metric not in row for row, _ in scored):
        raise ConfigError(f"evaluate.champion_scale=auto: no scale of {sampler} ({method}) has "
                          f"evaluate.champion_metric={cfg.champion_metric!r} (evaluate.features={cfg.features})")
    sign = -1 if cfg.champion_metric in HIGHER_IS_BETTER else 1
    return min(scored, key=lambda pair: sign * float(pair[0][cfg.champion_metric]))[1]


def _row_of(rows: list, cell: dict) -> dict | None:
    implied = {"guidance_method": "classifier", "guidance_interval": "all"}  # rows of grids without these axes
    return next((r for r in rows if all(r.get(k, implied.get(k)) == v for k, v in cell.items())), None)


def champion_row(preset: Preset, rows: list) -> dict:
    cfg, cell = preset.evaluate, champion_cell(preset, rows)
    row = _row_of(rows, cell)
    if row is None:
        raise ConfigError(f"the champion cell {cell} (evaluate.champion_sampler, _method, _scale) is not one of the "
                          f"sampled cells {[r['cell'] for r in rows]}")
    if cfg.champion_metric not in row:
        raise ConfigError(f"evaluate.champion_metric={cfg.champion_metric!r} was not computed "
                          f"(evaluate.features={cfg.features})")
    return row


def beats(value: float, best: float | None, metric: str) -> bool:
    return best is None or (value > best if metric in HIGHER_IS_BETTER else value < best)


def register(tracker: Tracker, run_id: str, preset: Preset, prefix: str, trained: dict, rows: list, lineage: dict,
             log=print) -> dict:
    """Register both networks with `lineage` tags (data fingerprint, code version, config hash, pipeline run) and
    the metric; move `champion` if the metric improved. Returns, per network, its version and the decision."""
    cfg = preset.evaluate
    metric = cfg.champion_metric
    row = champion_row(preset, rows)
    value, scale = float(row[metric]), float(row["guidance_scale"])
    tag = tags.champion_metric(metric, cfg.champion_scale)
    # auto: the scale chosen, for `adm sample models:/...@champion` to sample at by default
    chosen = {tags.BEST_SCALE: f"{scale:g}"} if cfg.champion_scale == AUTO else {}
    names = model_names(prefix, trained)  # the set: the registered networks this run trained
    versions = {kind: tracker.register(trained[kind]["model_uri"], name, trained[kind]["run_id"],
                                       tags={tag: value, **chosen, **lineage, **trained[kind].get("lineage", {})})
                for kind, name in names.items()}
    current = tracker.alias_version(names["diffusion"], CHAMPION)
    best = None if current is None or tag not in current.tags else float(current.tags[tag])
    better = beats(value, best, metric)
    if better:
        why = (f"{metric} {value:.4g}: the first registered version, no champion yet" if best is None else
               f"{metric} {value:.4g} beat the champion's {best:.4g}")
        for kind, name in names.items():
            move_alias(tracker, name, CHAMPION, versions[kind], "register", why)
    log("[register] " + ", ".join(f"{names[k]} v{versions[k]}" for k in names)
        + f": {metric}@{scale:g}{' (auto)' if chosen else ''} = {value:.4g}"
        + (" -> champion" if better else f" (champion keeps {best:.4g})"))
    tracker.log_params(run_id, {"champion_metric": metric, "champion_scale": cfg.champion_scale,
                                "champion_scale_used": scale})
    return {kind: {"name": names[kind], "version": versions[kind], "champion": better, "metric": metric,
                   "value": value, "previous": best} for kind in names}


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def run(ctx: StageContext, inputs: dict) -> dict:
    """The registered networks (a cascade's upsampler too) with their lineage: the pipeline run, the code and config
    it ran, the dataset."""
    ingested = inputs["ingest"]  # a cascade's data: the large images as ingested (its base data derive from them)
    lineage = {tags.PIPELINE_RUN: ctx.pipeline_run_id, tags.CODE_VERSION: code_version(),
               tags.CONFIG_HASH: config_hash(ctx.preset),
               tags.DATA_FINGERPRINT: ingested.get("large_fingerprint", ingested["fingerprint"])}
    return register(ctx.tracker, ctx.run_id, ctx.preset, ctx.prefix, inputs["train"], inputs["evaluate"]["rows"],
                    lineage, ctx.log)


def publish(ctx: StageContext, outputs: dict) -> None:
    """The registered versions on the pipeline run (adm.registered.<network>), and whether each became champion."""
    ctx.tracker.set_tags(ctx.pipeline_run_id, {
        f"{tags.REGISTERED}.{kind}": f"{r['name']} v{r['version']} " + ("(champion)" if r["champion"] else
                                                                       "(champion kept)")
        for kind, r in outputs.items()})


STAGE = Stage("register", run, cache_inputs, publish=publish)
