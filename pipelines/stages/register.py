"""Register: the diffusion model and the noisy classifier (and a cascade's upsampler) become registered MLflow model
versions (`<prefix>-diffusion`, `<prefix>-classifier`, `<prefix>-upsampler`), and the alias `champion` moves to the
new set only when it is better than the champion by more than the noise: the champion is sampled at the champion cell
(champion.py) with the same seeds and labels as the new model, both are featurized against the same reference, and
the paired difference of `evaluate.champion_metric` must be better at `evaluate.promotion_level`
(components/uncertainty.py). Otherwise the champion stays, and the versions say why ("not distinguishable: delta
[lo, hi]"). A first registration has no champion to challenge. A cascade's upsampler moves with the base pair: the
challenge is decided at the base resolution. All aliases move together, after every version exists, so a failure
never leaves a mixed set."""

import dataclasses

from components.config import AUTO, Preset, to_dict
from components.config.kinds import preset_kinds
from pipelines.infra import tags
from pipelines.infra.lineage import code_version, config_hash
from pipelines.infra.registry import CHAMPION, model_names, move_alias
from pipelines.infra.tracking import Tracker
from pipelines.stages.champion import champion_row, improves
from pipelines.stages.context import Stage, StageContext
from pipelines.stages.evaluate import EvaluateJob, featurize, score_cells
from pipelines.stages.evaluate_inputs import npz_source
from pipelines.stages.sample import SampleJob, run_sampling


def cache_inputs(ctx: StageContext, inputs: dict) -> dict:
    """What decides the register stage's outcome: the networks, their metrics, the champion policy and the names."""
    policy = {k: v for k, v in to_dict(ctx.preset.evaluate).items()
              if k.startswith("champion_") or k in ("promotion_level", "bootstrap")}
    return {"train": inputs["train"], "evaluate": inputs["evaluate"], "policy": policy,
            "names": model_names(ctx.prefix, preset_kinds(ctx.preset))}


def register(tracker: Tracker, run_id: str, preset: Preset, prefix: str, trained: dict, rows: list, lineage: dict,
             challenge, log=print) -> dict:
    """Register both networks with `lineage` tags (data fingerprint, code version, config hash, pipeline run) and the
    champion cell's metric; `challenge(champion version)` -> the paired difference new - champion ({"delta", "lo",
    "hi", "resolved", "level"}) decides whether `champion` moves. Returns, per network, its version and decision."""
    cfg = preset.evaluate
    metric, row = cfg.champion_metric, champion_row(preset, rows)
    value, scale = float(row[metric]), float(row["guidance_scale"])
    tag = tags.champion_metric(metric, cfg.champion_scale)
    # auto: the scale chosen, for `adm sample models:/...@champion` to sample at by default
    chosen = {tags.BEST_SCALE: f"{scale:g}"} if cfg.champion_scale == AUTO else {}
    names = model_names(prefix, trained)  # the set: the registered networks this run trained
    versions = {kind: tracker.register(trained[kind]["model_uri"], name, trained[kind]["run_id"],
                                       tags={tag: value, **chosen, **lineage, **trained[kind].get("lineage", {})})
                for kind, name in names.items()}
    current = tracker.alias_version(names["diffusion"], CHAMPION)
    if current is None:
        compared, better = None, True
        why = f"{metric} {value:.4g}: the first registered version, no champion yet"
    elif str(current.version) == str(versions["diffusion"]):  # its training was reused: the champion's own networks
        log(f"[register] {names['diffusion']} v{current.version} is the champion itself: nothing to challenge")
        return {kind: {"name": names[kind], "version": versions[kind], "champion": False, "metric": metric,
                       "value": value, "reason": f"the champion's own networks (v{current.version})",
                       "compared": None} for kind in names}
    else:
        compared = challenge(current)
        better = compared["resolved"] and improves(metric, compared["delta"])
        span = f"{metric} delta {compared['delta']:+.4g} [{compared['lo']:+.4g}, {compared['hi']:+.4g}] at " \
               f"{compared['level']:.0%}, paired against champion v{current.version}"
        why = (f"better: {span}" if better else f"not better: {span}" if compared["resolved"] else
               f"not distinguishable: {span}")
    record = {tags.DECISION: "promoted" if better else "kept", tags.REASON: why}
    for kind, name in names.items():
        tracker.set_version_tags(name, versions[kind], record)
        if better:
            move_alias(tracker, name, CHAMPION, versions[kind], "register", why)
    log("[register] " + ", ".join(f"{names[k]} v{versions[k]}" for k in names)
        + f": {metric}@{scale:g}{' (auto)' if chosen else ''} = {value:.4g}; "
        + ("-> champion" if better else "the champion stays") + f" ({why})")
    tracker.log_params(run_id, {"champion_metric": metric, "champion_scale": cfg.champion_scale,
                                "champion_scale_used": scale})
    return {kind: {"name": names[kind], "version": versions[kind], "champion": better, "metric": metric,
                   "value": value, "reason": why, "compared": compared} for kind in names}


def challenge_champion(ctx: StageContext, inputs: dict, row: dict, champion) -> dict:
    """The paired difference new - champion of the champion metric at the champion cell (`row`): the champion pair
    (`champion`: its diffusion version, and the classifier of the same pipeline run) samples the cell with the same
    seeds and labels the new model's samples have; both sets are featurized with this run's evaluator against the
    same reference and resampled on the same subsets."""
    cfg, names = ctx.preset.evaluate, model_names(ctx.prefix)
    partner = ctx.tracker.model_versions(names["classifier"])
    run = champion.tags.get(tags.PIPELINE_RUN)
    classifier = next((v for v in partner if v.tags.get(tags.PIPELINE_RUN) == run), None)
    cell = {"samplers": (row["sampler"],), "guidance_methods": (row["guidance_method"],),
            "guidance_scales": (row["guidance_scale"],), "guidance_intervals": (row.get("guidance_interval", "all"),)}
    job = SampleJob(diffusion=f"models:/{names['diffusion']}/{champion.version}",
                    classifier=f"models:/{names['classifier']}/{classifier.version}" if classifier else None,
                    out=ctx.run_path("register", f"champion-v{champion.version}"),
                    config=dataclasses.replace(ctx.preset.sample, **cell), tracking_uri=ctx.tracker.uri,
                    experiment=ctx.experiment)
    sampled = run_sampling(job, log=ctx.log)
    scoring = dataclasses.replace(cfg, bootstrap=cfg.bootstrap or 200, ci_level=cfg.promotion_level)
    evaluation = EvaluateJob(samples="", reference=inputs["ingest"]["data_url"], config=scoring,
                             evaluator=f"runs:/{inputs['train']['evaluator']['run_id']}", cache_dir=ctx.path("cache"),
                             tracking_uri=ctx.tracker.uri, experiment=ctx.experiment)
    samples = {}
    for key, url in (("new", inputs["sample"]["npz"][row["cell"]]), ("champion", sampled.npz[row["cell"]])):
        samples[key] = npz_source(url, key, f"{key} samples")
        samples[key].cell = {**{k: row[k] for k in ("sampler", "guidance_method", "guidance_scale") if k in row},
                             "cell": key}
    scored = score_cells(evaluation, samples, *featurize(evaluation, samples, ctx.log))
    d = scored.cells["new"].differences(scored.cells["champion"], cfg.promotion_level)[cfg.champion_metric]
    return {"delta": d.delta, "lo": d.lo, "hi": d.hi, "resolved": d.resolved, "level": cfg.promotion_level,
            "champion_value": scored.cells["champion"].statistics[cfg.champion_metric].estimate}


# --- as a stage of `adm run` -------------------------------------------------------------------------------------
def run(ctx: StageContext, inputs: dict) -> dict:
    """The registered networks (a cascade's upsampler too) with their lineage: the pipeline run, the code and config
    it ran, the dataset; the champion challenged at the champion cell."""
    ingested = inputs["ingest"]  # a cascade's data: the large images as ingested (its base data derive from them)
    lineage = {tags.PIPELINE_RUN: ctx.pipeline_run_id, tags.CODE_VERSION: code_version(),
               tags.CONFIG_HASH: config_hash(ctx.preset),
               tags.DATA_FINGERPRINT: ingested.get("large_fingerprint", ingested["fingerprint"])}
    rows = inputs["evaluate"]["rows"]
    row = champion_row(ctx.preset, rows)
    return register(ctx.tracker, ctx.run_id, ctx.preset, ctx.prefix, inputs["train"], rows, lineage,
                    lambda champion: challenge_champion(ctx, inputs, row, champion), ctx.log)


def publish(ctx: StageContext, outputs: dict) -> None:
    """The registered versions on the pipeline run (adm.registered.<network>), and whether each became champion."""
    ctx.tracker.set_tags(ctx.pipeline_run_id, {
        f"{tags.REGISTERED}.{kind}": f"{r['name']} v{r['version']} " + ("(champion)" if r["champion"] else
                                                                       "(champion kept)")
        for kind, r in outputs.items()})


STAGE = Stage("register", run, cache_inputs, publish=publish)
