"""Evaluation while training and keep_best (issue 24) on a real local Ray instance against a real MLflow server: the
classifiers' held-out metrics are metric histories over steps, the scores are reproducible from the checkpoints, and
keep_best reports the checkpoint of the lowest logged eval score."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from components.checkpoint import load_state_dict
from components.config import ConfigError, apply_overrides
from components.config.presets import get_preset
from components.diffusion import create_diffusion
from components.images import to_model_input
from components.networks import build_network
from components.precision import bf16_supported
from components.train_eval import classifier_scores
from pipelines.infra.dataset import read_split
from pipelines.stages.ingest import ingest
from pipelines.stages.sources import IngestOptions
from pipelines.stages.train import TrainOptions, train
from pipelines.stages.train_monitor import EVAL_IMAGES

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    dest = tmp_path_factory.mktemp("data") / "shapes"
    ingest("shapes", str(dest), IngestOptions(resolution=16, num_images=256, rows_per_shard=64,
                                              validation_fraction=0.2), **QUIET)
    return str(dest)


def shift_validation_labels(data_url: str, classes: int) -> None:
    """Relabel the validation split y -> y + 1 (mod classes): the better the classifier learns the training labels,
    the worse its held-out loss, so its best evaluation is an early one, by construction (keep_best cannot pass by
    taking the last checkpoint)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    for shard in (Path(data_url) / "validation").glob("*.parquet"):
        table = pq.read_table(shard)
        shifted = pc.cast(pc.add(table["label"], 1), pa.int64())
        shifted = pa.array([v % classes for v in shifted.to_pylist()], type=pa.int64())
        pq.write_table(table.set_column(table.column_names.index("label"), "label", shifted), shard)


def _history(client, run_id: str, key: str) -> dict:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _rescore(preset, checkpoint: str, data_url: str) -> dict:
    """The held-out scores of a checkpoint's weights, computed here from the files, outside Ray."""
    net = build_network("classifier", preset)
    net.load_state_dict(load_state_dict(Path(checkpoint) / "model.safetensors"))
    images, labels = read_split(data_url, "validation", limit=EVAL_IMAGES)
    return classifier_scores(net, create_diffusion(preset.diffusion, ""), to_model_input(images),
                             torch.as_tensor(labels), noised=True)


def test_held_out_metrics_over_steps_and_keep_best_reports_the_best(tmp_path, shapes, ray_cluster, mlflow_server):
    """The three trainers side by side. The validation labels are shifted by one class, so the classifier's held-out
    loss grows as it learns: its best evaluation is not the last, and keep_best must report an earlier one."""
    data = tmp_path / "shifted"
    shutil.copytree(shapes, data)
    shift_validation_labels(str(data), classes=4)
    shapes = str(data)
    preset = apply_overrides(get_preset("smoke"), [
        "train_classifier.steps=20", "train_classifier.eval_interval=4", "train_classifier.keep_best=true",
        "train_classifier.save_interval=10", "train_classifier.keep_checkpoints=1", "train_classifier.lr=1e-1",
        "train_evaluator.steps=10", "train_evaluator.eval_interval=5",
        "train_diffusion.steps=20", "train_diffusion.eval_interval=10", "train_diffusion.keep_best=true",
        "train_diffusion.save_interval=20", "train_diffusion.sample_interval=0",
        # set, not measured: the construction below (the held-out loss grows as the classifier learns) was found
        # under bf16 autocast where the CPU has bf16 kernels (float32 elsewhere), and in float32 on a bf16 CPU the
        # loss fell to the last step; the rescoring takes the same settings
        *(f"train_{k}.{f}={v}" for k in ("classifier", "evaluator", "diffusion")
          for f, v in (("precision", "bf16" if bf16_supported("cpu") else "fp32"), ("channels_last", "off"),
                       ("compile", "off")))])
    opts = TrainOptions(storage=str(tmp_path / "storage"), tracking_uri=mlflow_server, experiment="eval")
    outcomes = train(preset, shapes, opts, **QUIET)
    client = MlflowClient(mlflow_server)
    _check_diffusion(client, outcomes["diffusion"])
    run = outcomes["classifier"].run_id
    for q in range(4):  # every eval_interval steps, the last step included
        assert sorted(_history(client, run, f"val_accuracy_q{q}")) == [4, 8, 12, 16, 20]
    losses = _history(client, run, "val_loss")
    assert sorted(losses) == [4, 8, 12, 16, 20] and all(math.isfinite(v) for v in losses.values())
    evaluator = outcomes["evaluator"].run_id
    assert sorted(_history(client, evaluator, "val_accuracy")) == [5, 10]
    # keep_best: the reported checkpoint is the one of the lowest val_loss (the later step on a tie), tagged
    best = min(losses, key=lambda s: (losses[s], -s))
    assert best < 20, losses  # by construction: an earlier checkpoint than the last
    tags = client.get_run(run).data.tags
    assert tags["adm.best_step"] == str(best)
    reported = Path(outcomes["classifier"].checkpoint)
    assert json.loads((reported / "state.json").read_text())["step"] == best
    assert tags["adm.checkpoint"] == str(reported) and reported.exists()
    # fixed seeds: the same weights give the logged numbers again, outside the trainer
    again = _rescore(preset, str(reported), shapes)
    assert again["val_loss"] == pytest.approx(losses[best], rel=1e-4)
    for q in range(4):
        assert again[f"val_accuracy_q{q}"] == pytest.approx(_history(client, run, f"val_accuracy_q{q}")[best])


def _check_diffusion(client, outcome) -> None:
    """FID of the fixed sample set over steps, how it was guided, and keep_best's choice among them."""
    fid = _history(client, outcome.run_id, "eval_fid")
    assert sorted(fid) == [10, 20] and all(math.isfinite(v) and v > 0 for v in fid.values())
    assert sorted(_history(client, outcome.run_id, "eval_guided_by_step")) == [10, 20]
    best = min(fid, key=lambda s: (fid[s], -s))
    assert client.get_run(outcome.run_id).data.tags["adm.best_step"] == str(best)
    assert json.loads((Path(outcome.checkpoint) / "state.json").read_text())["step"] == best


def test_evaluation_needs_a_validation_split(tmp_path, mlflow_server, actor_count):
    plain = str(tmp_path / "plain")
    ingest("shapes", plain, IngestOptions(resolution=16, num_images=32), **QUIET)
    actors = actor_count()
    with pytest.raises(ConfigError, match="train_classifier.eval_interval=5 needs a validation split of 2 images or "
                                          "more, and this dataset has 0"):
        train(apply_overrides(get_preset("smoke"), ["train_classifier.eval_interval=5"]), plain,
              TrainOptions(storage=str(tmp_path / "storage"), tracking_uri=mlflow_server, experiment="noval"),
              kinds=("classifier",), **QUIET)
    assert actor_count() == actors
