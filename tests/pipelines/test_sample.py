"""Guided sampling fan-out on a real local Ray instance, with tiny random-weight networks."""

import dataclasses
import io
import json

import fsspec
import numpy as np
import pytest
import ray
import torch
from mlflow import MlflowClient

from components.config import SampleConfig, UserError, apply_overrides
from components.config.grid import Cell
from components.config.presets import get_preset
from components.guided import GuidedNetworks, sample_batch
from components.precision import SpeedSettings, apply_layout, autocast_context
from components.sampling import sample_label, sample_seed
from components.training import Learner
from pipelines.infra.model_refs import resolve
from pipelines.stages.sample import SampleJob, log_to_mlflow, plan_shards, run_sampling, shard_url, validate


def _save(kind, preset, folder):
    learner = Learner(kind, preset, torch.device("cpu"), seed={"diffusion": 1, "classifier": 2}[kind])
    torch.manual_seed(3)
    for p in learner.net.parameters():
        p.data.normal_(0, 0.05)
    learner.ema = {}  # the raw weights are the ones to sample with
    learner.save(folder, config={"kind": kind, "preset": __import__("dataclasses").asdict(preset)})
    return str(folder)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    root = tmp_path_factory.mktemp("nets")
    preset = get_preset("smoke")
    other = apply_overrides(preset, ["classifier.num_classes=7"])
    dropout = apply_overrides(preset, ["train_diffusion.label_dropout=0.1"])
    # autoguidance's guide: another network of the same image size, channels and classes (here one block more)
    guide = apply_overrides(preset, ["unet.num_res_blocks=2"])
    return {"diffusion": _save("diffusion", preset, root / "diffusion"),
            "guide": _save("diffusion", guide, root / "guide"),
            "diffusion_cfg": _save("diffusion", dropout, root / "diffusion_cfg"),
            "classifier": _save("classifier", preset, root / "classifier"),
            "classifier7": _save("classifier", other, root / "classifier7")}


def _job(nets, out, **kw):
    """A job on the test networks; keyword arguments that name a SampleConfig field set the sample section."""
    fields = {f.name for f in dataclasses.fields(SampleConfig)}
    # compile off: whether `auto` tries torch.compile depends on the measured step time (can the job repay compiling?),
    # so on a loaded machine it would; precision and channels_last stay auto, measured, and every check below holds
    # for whichever the job took (kept in its plan.json)
    settings = dict(guidance_scales=(0.0, 2.0), num_samples=6, samplers=("ddim5",), batch_size=4, seed=11,
                    compile="off")
    settings.update({k: kw.pop(k) for k in list(kw) if k in fields})
    base = dict(diffusion=nets["diffusion"], classifier=nets["classifier"], out=str(out))
    return SampleJob(**{**base, **kw}, config=SampleConfig(**settings))


def _load(url):
    with fsspec.open(url, "rb") as f:
        data = np.load(io.BytesIO(f.read()))
        return data["arr_0"], data["arr_1"]


def _speed(out) -> SpeedSettings:
    """The speed settings the actors of the job in `out` sampled with: the job's choice, kept in its plan.json."""
    with fsspec.open(f"{out}/plan.json") as f:
        return SpeedSettings.from_dict(json.load(f)["speed"]["settings"])


def _direct(nets, cell: Cell, n: int, threads: int, settings: SpeedSettings, diffusion: str = "diffusion"
            ) -> np.ndarray:
    """Samples 0..n-1 of seed 11 of `cell` outside Ray, through the one guidance composition as an actor draws them
    (`threads` torch threads, the job's speed settings), in one batch of n rows."""
    ref, clf = resolve(nets[diffusion], "diffusion"), resolve(nets["classifier"], "classifier")
    network, classifier, guide = ref.build(), clf.build(), resolve(nets["guide"], "diffusion").build()
    for net in (network, classifier, guide):
        apply_layout(net, settings.channels_last)
    guided = GuidedNetworks(network, ref.config, ref.preset.diffusion, "cpu", network.null_label, classifier,
                            guide=guide)
    seeds = [sample_seed(11, i) for i in range(n)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with autocast_context("cpu", settings.precision):
            return sample_batch(guided, [cell] * n, seeds, [sample_label(s, 4) for s in seeds])[0]
    finally:
        torch.set_num_threads(before)


def test_fan_out_layout_determinism_and_resume(tmp_path, nets, ray_cluster):
    one = run_sampling(_job(nets, tmp_path / "one", actors=1), log=lambda *_: None)
    two = run_sampling(_job(nets, tmp_path / "two", actors=2, actor_cpus=1), log=lambda *_: None)
    assert one.busy_seconds > 0 and two.busy_seconds > 0
    assert one.warm_images == 8 and 0 < one.warm_seconds < one.busy_seconds  # 3 shards of 4, the actor's first left out
    assert {j for j, _ in plan_shards(_job(nets, tmp_path).cells, 6, 4)[1]} == {0, 1}  # the middle shard: both
    for key in ("ddim5/scale_0", "ddim5/scale_2"):
        images, labels = _load(one.npz[key])
        assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 4
        assert one.npz[key].endswith("ddim5/scale_" + key[-1] + "/samples_6x16x16x3.npz")
        other_images, other_labels = _load(two.npz[key])
        assert images.tobytes() == other_images.tobytes() and np.array_equal(labels, other_labels)
    assert not np.array_equal(_load(one.npz["ddim5/scale_0"])[0], _load(one.npz["ddim5/scale_2"])[0])

    # one speed choice for both jobs (measured by the first, cached for the second: the cache key holds neither the
    # batch nor the actor count), kept in each plan
    assert _speed(tmp_path / "one") == _speed(tmp_path / "two")
    # scale 0 is exactly unguided sampling of the same seeds and labels, run as run `one`'s actor runs it: 2 torch
    # threads (its 1.5 CPUs, rounded) and the job's speed settings (bf16 autocast where it was measured faster, where
    # oneDNN's kernels can also round differently with the thread count)
    direct = _direct(nets, Cell("ddim5", 0.0), 4, threads=2, settings=_speed(tmp_path / "one"))
    assert direct.tobytes() == _load(one.npz["ddim5/scale_0"])[0][:4].tobytes()

    # an interrupted run (two shards never written) resumes without redoing the finished one
    fs = fsspec.filesystem("file")
    before = _load(one.npz["ddim5/scale_2"])[0]
    for k in (1, 2):
        fs.rm(shard_url(str(tmp_path / "one"), k))
    again = run_sampling(_job(nets, tmp_path / "one", actors=1), log=lambda *_: None)
    assert (again.computed_shards, again.skipped_shards) == (2, 1)
    assert _load(again.npz["ddim5/scale_2"])[0].tobytes() == before.tobytes()
    # the folder belongs to that grid: a job of another grid is refused before it mixes its shards in
    with pytest.raises(UserError, match="holds samples of another job .*cells"):
        run_sampling(_job(nets, tmp_path / "one", actors=1, guidance_scales=(0.0, 4.0)), log=lambda *_: None)


GRID = dict(samplers=("ddim5", "dpm++2m-4"), guidance_scales=(0.0, 2.0), guidance_intervals=("all", "0.5:5"))


def test_mixed_cell_batches_equal_single_cell_batches_and_actor_counts(tmp_path, nets, ray_cluster):
    """Batches of 5 mix scales and intervals (and never samplers); batches of 6 hold one cell each. A sample depends
    only on (seed, label, cell): the same bytes either way, and with 1 or 2 actors."""
    mixed = run_sampling(_job(nets, tmp_path / "mixed", actors=1, batch_size=5, **GRID), log=lambda *_: None)
    single = run_sampling(_job(nets, tmp_path / "single", actors=2, actor_cpus=1, batch_size=6, **GRID),
                          log=lambda *_: None)
    cells = _job(nets, tmp_path, **GRID).cells
    assert [c.key for c in cells] == ["ddim5/scale_0", "ddim5/scale_2", "ddim5/scale_2_sigma_0.5-5",
                                      "dpm++2m-4/scale_0", "dpm++2m-4/scale_2", "dpm++2m-4/scale_2_sigma_0.5-5"]
    shards = plan_shards(cells, 6, 5)
    assert any(len({cells[j].interval for j, _ in shard}) > 1 for shard in shards)  # scale 2: all and 0.5:5 mixed
    assert all(len({cells[j].sampler for j, _ in shard}) == 1 for shard in shards)
    for cell in cells:
        assert _load(mixed.npz[cell.key])[0].tobytes() == _load(single.npz[cell.key])[0].tobytes(), cell.key
    # each classifier-guided cell is the composition of its scale and interval run directly on the same seeds and
    # labels (single: one cell per batch of 6, one torch thread per actor)
    for cell in cells:
        if cell.scale:
            direct = _direct(nets, cell, 6, threads=1, settings=_speed(tmp_path / "single"))
            assert direct.tobytes() == _load(single.npz[cell.key])[0].tobytes(), cell.key
    # an interval changes the samples; the samplers differ
    assert _load(mixed.npz["ddim5/scale_2"])[0].tobytes() != _load(mixed.npz["ddim5/scale_2_sigma_0.5-5"])[0].tobytes()
    assert _load(mixed.npz["ddim5/scale_0"])[0].tobytes() != _load(mixed.npz["dpm++2m-4/scale_0"])[0].tobytes()


def test_compute_accounting_per_cell(tmp_path, nets, ray_cluster):
    """cell.json: network evaluations per sample as the sampler string says; classifier passes only where guided,
    fewer inside an interval (counted from the linear schedule's trained sigmas at the DDIM-5 timesteps)."""
    import json

    from components.config.respacing import space_timesteps
    from components.guidance import trained_sigmas

    result = run_sampling(_job(nets, tmp_path / "cost", actors=1, **GRID), log=lambda *_: None)
    ref = resolve(nets["diffusion"], "diffusion")
    sigmas = trained_sigmas(ref.preset.diffusion)
    inside = sum(0.5 <= sigmas[t] <= 5 for t in space_timesteps(1000, "ddim5"))
    expected = {"ddim5/scale_0": (5, 0), "ddim5/scale_2": (5, 5), "ddim5/scale_2_sigma_0.5-5": (5, inside),
                "dpm++2m-4/scale_0": (4, 0), "dpm++2m-4/scale_2": (4, 4)}
    assert 0 < inside < 5
    for key, (evals, passes) in expected.items():
        record = result.cells[key]
        assert (record["network_evals"], record["classifier_passes"]) == (evals, passes), key
        with open(tmp_path / "cost" / key / "cell.json") as f:
            assert json.load(f) == record
    interval = result.cells["dpm++2m-4/scale_2_sigma_0.5-5"]
    assert 0 < interval["classifier_passes"] < 4 and (interval["interval_lo"], interval["interval_hi"]) == (0.5, 5)
    assert result.cells["ddim5/scale_2"]["interval_hi"] == pytest.approx(sigmas[-1])
    assert all(r["sample_seconds"] > 0 for r in result.cells.values())


METHODS = dict(samplers=("ddim5",), guidance_scales=(0.0, 2.0), guidance_methods=("classifier", "cfg", "both"))


def test_guidance_methods_share_batches_and_count_their_compute(tmp_path, nets, ray_cluster):
    """Classifier, classifier-free and combined cells in mixed batches give the samples of single-cell batches (and
    of 2 actors); CFG costs two network evaluations per step, the combined method those and a classifier pass."""
    job = _job(nets, tmp_path / "mixed", actors=1, batch_size=4, diffusion=nets["diffusion_cfg"], **METHODS)
    assert [c.key for c in job.cells] == ["ddim5/scale_0", "ddim5/scale_2", "ddim5/cfg_scale_2", "ddim5/both_scale_2"]
    mixed = run_sampling(job, log=lambda *_: None)
    single = run_sampling(_job(nets, tmp_path / "single", actors=2, actor_cpus=1, batch_size=6,
                               diffusion=nets["diffusion_cfg"], **METHODS), log=lambda *_: None)
    for cell in job.cells:
        assert _load(mixed.npz[cell.key])[0].tobytes() == _load(single.npz[cell.key])[0].tobytes(), cell.key
    cost = {k: (r["network_evals"], r["classifier_passes"]) for k, r in mixed.cells.items()}
    assert cost == {"ddim5/scale_0": (5, 0), "ddim5/scale_2": (5, 5), "ddim5/cfg_scale_2": (10, 0),
                    "ddim5/both_scale_2": (10, 5)}
    images = {k: _load(u)[0].tobytes() for k, u in mixed.npz.items()}
    assert len(set(images.values())) == 4  # every method moves the samples its own way
    # the cfg and both cells at s = 2 are the composition of their method and scale run directly on the same seeds
    # and labels (single: one cell per batch of 6, one torch thread per actor)
    for cell in job.cells[2:]:
        direct = _direct(nets, cell, 6, threads=1, settings=_speed(tmp_path / "single"), diffusion="diffusion_cfg")
        assert direct.tobytes() == _load(single.npz[cell.key])[0].tobytes(), cell.key
    assert mixed.cells["ddim5/both_scale_2"]["cfg_scale"] == mixed.cells["ddim5/both_scale_2"]["classifier_scale"] == 2
    # a network trained without label dropout has no null class: refused before any actor starts
    with pytest.raises(UserError, match="needs a diffusion model trained with label dropout"):
        run_sampling(_job(nets, tmp_path / "refused", **METHODS), log=lambda *_: None)
    assert not (tmp_path / "refused").exists()


def test_autoguidance_cells_run_their_guide_and_count_it_apart(tmp_path, nets, ray_cluster):
    """Method auto with sample.guide_from: the guide runs on the autoguided cell's rows only, its evaluations are
    counted apart from the main model's, and the cell is the composition run directly; a missing guide or one that
    is not a diffusion model of the same shape is refused before any actor."""
    job = _job(nets, tmp_path / "auto", actors=1, batch_size=6, guidance_methods=("auto",), guide_from=nets["guide"])
    assert [c.key for c in job.cells] == ["ddim5/scale_0", "ddim5/auto_scale_2"]
    result = run_sampling(job, log=lambda *_: None)
    cost = {k: (r["network_evals"], r["guide_evals"], r["classifier_passes"]) for k, r in result.cells.items()}
    assert cost == {"ddim5/scale_0": (5, 0, 0), "ddim5/auto_scale_2": (5, 5, 0)}
    direct = _direct(nets, job.cells[1], 6, threads=2, settings=_speed(tmp_path / "auto"))
    assert direct.tobytes() == _load(result.npz["ddim5/auto_scale_2"])[0].tobytes()
    with open(tmp_path / "auto" / "plan.json") as f:
        assert json.load(f)["guide"] == nets["guide"]
    with pytest.raises(UserError, match="needs a guiding network"):
        validate(_job(nets, tmp_path / "none", guidance_methods=("auto",)))
    with pytest.raises(UserError, match="is a classifier checkpoint"):
        validate(_job(nets, tmp_path / "wrong", guidance_methods=("auto",), guide_from=nets["classifier"]))


def test_child_run_per_cell(tmp_path, nets, ray_cluster, mlflow_server):
    job = _job(nets, tmp_path / "tracked", num_samples=2, batch_size=4, tracking_uri=mlflow_server,
               experiment="sampling", guidance_intervals=("all", "0.5:5"))
    result = log_to_mlflow(job, run_sampling(job, log=lambda *_: None), log=lambda *_: None)
    client = MlflowClient(mlflow_server)
    assert sorted(result.run_ids) == ["ddim5/scale_0", "ddim5/scale_2", "ddim5/scale_2_sigma_0.5-5"]
    parent = client.get_run(result.run_ids["ddim5/scale_0"]).data.tags["mlflow.parentRunId"]
    under = client.search_runs([client.get_experiment_by_name("sampling").experiment_id],
                               f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.run_id for r in under) == sorted(result.run_ids.values())
    for key, run_id in result.run_ids.items():
        run = client.get_run(run_id)
        cell = next(c for c in job.cells if c.key == key)
        assert float(run.data.params["guidance_scale"]) == run.data.metrics["guidance_scale"] == cell.scale
        assert run.data.params["sampler"] == "ddim5" and run.data.tags["adm.cell"] == key
        assert run.data.params["guidance_interval"] == cell.interval_text
        # every coordinate and the compute as a number, for the compare view's axes
        for name in ("interval_lo", "interval_hi", "steps", "network_evals", "classifier_passes", "sample_seconds"):
            assert run.data.metrics[name] == pytest.approx(result.cells[key][name]), name
        assert run.data.metrics["steps"] == 5 and run.data.metrics["network_evals"] == 5
        assert [a.path for a in client.list_artifacts(run_id)] == ["grid.png"]


def test_bad_input_is_refused_before_actors(tmp_path, nets, actor_count):
    out, actors = tmp_path / "out", actor_count()
    cases = [({"guidance_scales": (-1.0,)}, ">= 0"), ({"guidance_scales": ("a",)}, "finite numbers"),
             ({"num_samples": 0}, "num_samples=0 must be a whole number >= 1"), ({"actor_cpus": 0}, "actor_cpus"),
             ({"actors": -1}, "--actors"), ({"classifier": None}, "needs a noisy classifier"),
             ({"classifier": nets["classifier7"]}, "7 classes"),
             ({"diffusion": str(tmp_path / "missing")}, "does not exist"),
             ({"classifier": nets["diffusion"]}, "is a diffusion checkpoint"),
             ({"samplers": ("ddim5", "dpm++3m-4")}, "'dpm\\+\\+3m-4' is unknown"),
             ({"samplers": ("dpm++2m-1001",)}, "1001 steps of the 1000 trained"),
             ({"guidance_intervals": ("5:1",)}, "interval '5:1' is not valid"),
             ({"guidance_intervals": ()}, "guidance_intervals is empty"),
             ({"label": 4}, "--label 4: the diffusion model has 4 classes, labels 0 to 3"),
             ({"label": -1}, "--label -1: the diffusion model has 4 classes")]
    for change, message in cases:
        with pytest.raises(UserError, match=message):
            run_sampling(_job(nets, out, **change), log=lambda *_: None)
    # refused before the actor pool: no Ray actor ever started, nothing written
    assert actor_count() == actors and not out.exists()
    validate(_job(nets, tmp_path, classifier=None, guidance_scales=(0.0,)))  # unguided needs no classifier


@pytest.mark.parametrize("gpus, requested, per_gpu, pending, actors, share", [
    (1, None, 1, 5, 1, 1.0), (1, 2, 1, 5, 2, 0.5), (2, 3, 1, 5, 3, 0.5), (4, None, 1, 2, 2, 1.0),
    (1, 4, 1, 3, 3, 1 / 3), (2, None, 2, 9, 4, 0.5), (2, 3, 2, 9, 3, 0.5), (1, None, 2, 1, 1, 1.0)])
def test_actor_plan_places_every_actor_on_gpu_clusters(monkeypatch, gpus, requested, per_gpu, pending, actors, share):
    """More sampler actors than GPUs share the GPUs (1/k each) instead of asking for GPUs that never come;
    `per_gpu` actors per GPU by default (two overlap a small network's kernel launches)."""
    from pipelines.infra.resources import actor_plan

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": float(gpus)})
    n, resources = actor_plan(requested, pending, per_gpu=per_gpu)
    assert (n, resources["num_gpus"]) == (actors, pytest.approx(share))
    per_gpu = round(1 / resources["num_gpus"])
    assert per_gpu * gpus >= n and resources["num_cpus"] == 1
