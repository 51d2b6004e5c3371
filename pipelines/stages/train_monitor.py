"""Evaluation while training, on a trainer's rank-0 worker: every train_<kind>.eval_interval steps (and at the last
step) the weights that would be registered (the EMA of the first rate, else the trained weights) are scored on fixed
held-out data and the numbers logged to the training run as metrics over steps.

* classifier: accuracy on the first EVAL_IMAGES images of the validation split per noise quartile of t, with fixed
  t and noise (components/train_eval.py): val_accuracy_q0..q3, and val_loss.
* evaluator: val_accuracy and val_loss on the same images, clean.
* upsampler: eval_fid of its upsamplings of the first EVAL_SAMPLES validation images (their area downsample, quantised
  as a cascade's base data; fixed seeds, DPM-Solver++(2M) with 10 steps, no augmentation noise) against the large
  validation images' statistics.
* diffusion: eval_fid of EVAL_SAMPLES samples of a fixed set (fixed seeds and labels, DPM-Solver++(2M) with 10 steps)
  from the EMA weights at evaluate.champion_scale, guided by the latest checkpoint of the classifier training beside it
  (eval_guided_by_step: its step; 0: none yet, unguided). Features: the FID Inception network, always. The evaluator
  network trains at the same time and its checkpoints change under it, so its features would not compare one step
  with the next. The reference statistics are those of the validation split (up to EVAL_REFERENCE images), computed
  once per worker.

`eval_score` is the one lower-is-better number per evaluation that ranks checkpoints for train_<kind>.keep_best
(val_loss; eval_fid). The cost is small on purpose: EVAL_IMAGES x 4 classifier passes, or EVAL_SAMPLES samples of
10 steps and their Inception features.
"""

import json
import posixpath

import numpy as np
import torch
from safetensors.torch import load as load_safetensors

from components.checkpoint import load_into
from components.config import AUTO
from components.config.kinds import kind as network_kind
from components.features import InceptionFeatures
from components.images import to_model_input
from components.metrics import covariance_root, feature_statistics, frechet_distance_to_reference
from components.networks import build_network
from components.train_eval import classifier_scores, sample_fixed_set, upsample_fixed_set
from pipelines.infra.dataset import read_split
from pipelines.infra.model_refs import latest_checkpoint
from pipelines.infra.storage import read_bytes

EVAL_IMAGES = 64  # the fixed held-out batch: the first images of the validation split, in shard order
EVAL_SAMPLES = 64  # the diffusion model's fixed sample set: seeds and labels of sample indices 0..63
EVAL_REFERENCE = 1000  # validation images the FID reference statistics are computed from (at most)
FEATURE_BATCH = 64
SCORE = "eval_score"  # the key of the ranking number in a checkpoint's report (Ray's checkpoint_score_attribute)


def eval_due(cfg, step: int) -> bool:
    """Whether step `step` is evaluated: every eval_interval steps and at the last one. The same on every rank, so
    that all ranks report a keep_best checkpoint together."""
    return bool(cfg.eval_interval) and (step % cfg.eval_interval == 0 or step == cfg.steps)


class HeldOut:
    """The fixed held-out batch of one trainer, read once per worker and kept on its device."""

    def __init__(self, data_url: str, device: torch.device):
        images, labels = read_split(data_url, "validation", limit=EVAL_IMAGES)
        self.x_start = to_model_input(images).to(device)  # [N, C, H, W] in [-1, 1]
        self.labels = torch.as_tensor(labels, dtype=torch.long, device=device)

    def scores(self, learner) -> dict:
        """The evaluation's metrics, with SCORE the one that ranks checkpoints."""
        net = learner.ema_network()
        out = classifier_scores(net, learner.diffusion, self.x_start, self.labels, learner.network.noised)
        return {**out, SCORE: out["val_loss"]}


def make_eval(kind: str, data_url: str, guide_dir: str, device: torch.device):
    """The evaluation of a trainer of network `kind` (rank 0 only)."""
    if network_kind(kind).upsamples:
        return UpsampleFID(data_url, device)
    if network_kind(kind).is_unet:
        return SampleFID(data_url, guide_dir, device)
    return HeldOut(data_url, device)


def eval_scale(preset) -> float:
    """The guidance scale of the fixed sample set: evaluate.champion_scale, or with `auto` (chosen only after the grid
    is evaluated) the middle scale of the grid, fixed for the run so that steps compare."""
    scale = preset.evaluate.champion_scale
    if scale == AUTO:
        scales = sorted(float(s) for s in preset.sample.guidance_scales)
        return scales[len(scales) // 2]
    return float(scale)


class SampleFID:
    """FID of the diffusion model's fixed sample set against the validation split, in Inception pool features."""

    def __init__(self, data_url: str, guide_dir: str, device: torch.device):
        self.device, self.guide_dir = device, guide_dir
        self.inception = InceptionFeatures(device=device)
        self.images, self.labels = read_split(data_url, "validation", limit=EVAL_REFERENCE)
        self.mu, self.sigma = feature_statistics(self.features(self.images))
        self.root = covariance_root(self.sigma)  # once per worker: each evaluation then costs one small eigh

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.inception(images[i:i + FEATURE_BATCH])["pool"]
                               for i in range(0, len(images), FEATURE_BATCH)])

    def fid(self, images: np.ndarray) -> float:
        return frechet_distance_to_reference(self.features(images), self.mu, self.sigma, self.root)

    def scores(self, learner) -> dict:
        preset = learner.preset
        classifier, step = latest_classifier(self.guide_dir, preset, self.device)
        num_classes = preset.unet.num_classes or preset.classifier.num_classes
        images = sample_fixed_set(learner.ema_network(), preset.diffusion, preset.unet, EVAL_SAMPLES, num_classes,
                                  self.device, classifier=classifier, scale=eval_scale(preset))
        fid = self.fid(images)
        return {"eval_fid": fid, "eval_guided_by_step": step, SCORE: fid}


class UpsampleFID(SampleFID):
    """FID of the upsampler's upsamplings of the first EVAL_SAMPLES validation images (at the large size) against the
    validation split's statistics: how far its outputs are from the real large images, step by step."""

    def __init__(self, data_url: str, device: torch.device):
        super().__init__(data_url, "", device)

    def scores(self, learner) -> dict:
        spec, preset, net = learner.network, learner.preset, learner.ema_network()
        images = upsample_fixed_set(net, spec.process_config(preset), spec.network_config(preset),
                                    self.images[:EVAL_SAMPLES], self.labels[:EVAL_SAMPLES], self.device,
                                    noise_level=bool(getattr(net, "noise_level", False)))
        fid = self.fid(images)
        return {"eval_fid": fid, SCORE: fid}


def latest_classifier(folder: str, preset, device: torch.device):
    """(network, step) of the newest complete checkpoint under the classifier trainer's Ray Train folder, or (None, 0)
    when there is none yet. A checkpoint still being written (no state.json yet) is passed over."""
    path = latest_checkpoint(folder) if folder else None
    if path is None:
        return None, 0
    cfg = network_kind("classifier").train_config(preset)
    file = posixpath.join(path, f"ema_{cfg.ema_rate[0]}.safetensors" if cfg.ema_rate else "model.safetensors")
    net = build_network("classifier", preset)
    load_into(net, load_safetensors(read_bytes(file)), source=file)
    step = int(json.loads(read_bytes(posixpath.join(path, "state.json")))["step"])
    return net.eval().to(device), step
