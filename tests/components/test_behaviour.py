"""What the product claims, on fixed inputs: guidance raises the evaluator's accuracy on the samples.

Tiny fixed checkpoints (tests/data/behaviour, made once by scripts/make_behaviour_checkpoints.py: an unconditional
diffusion model, a noisy classifier and a clean-image evaluator trained on 8x8 synthetic shapes of 4 classes) sample
fixed seeds and labels through the one guidance composition, in float32. Unguided, the unconditional model makes
each class about a quarter of the time; a confident classifier's guidance at scale 4 makes the target class nearly
always (0.30 -> 0.93 of 128 samples when the checkpoints were made), so the test asks for a gain of 0.4 at least,
far outside what sampling noise could give (the standard error of a difference of two accuracies of 128 paired
samples is below 0.06)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from components.config import preset_from_dict
from components.config.grid import Cell
from components.features import EvaluatorFeatures
from components.guided import GuidedNetworks, sample_batch
from components.networks import build_network
from components.sampling import sample_label, sample_seed

FOLDER = Path(__file__).resolve().parents[1] / "data" / "behaviour"
N = 128


@pytest.fixture(scope="module")
def trained():
    preset = preset_from_dict(json.loads((FOLDER / "preset.json").read_text())["preset"])
    nets = {}
    for kind in ("diffusion", "classifier", "evaluator"):
        net = build_network(kind, preset)
        net.load_state_dict({k: v.float() for k, v in load_file(FOLDER / f"{kind}.safetensors").items()}, strict=True)
        nets[kind] = net.eval()
    return preset, nets


def accuracy(preset, nets, scale: float, sampler: str = "ddim10") -> float:
    guided = GuidedNetworks(nets["diffusion"], preset.unet, preset.diffusion, "cpu", classifier=nets["classifier"])
    seeds = [sample_seed(0, i) for i in range(N)]
    labels = [sample_label(s, 4) for s in seeds]
    images, _ = sample_batch(guided, [Cell(sampler, scale)] * N, seeds, labels)
    probs = EvaluatorFeatures(nets["evaluator"], preset.unet.image_size, preset.unet.in_channels)(images)["probs"]
    return float((probs.argmax(1) == np.array(labels)).mean())


def test_classifier_guidance_raises_the_evaluators_accuracy(trained, one_thread):
    preset, nets = trained
    assert preset.unet.num_classes is None  # unconditional: the classes at scale 0 are not the labels' doing
    unguided, guided = accuracy(preset, nets, 0.0), accuracy(preset, nets, 4.0)
    assert unguided < 0.45, unguided  # about chance (0.25) for an unconditional model
    assert guided >= unguided + 0.4, (unguided, guided)
    assert accuracy(preset, nets, 4.0, "dpm++2m-8") >= unguided + 0.4  # any sampler, the same guidance


def test_the_checkpoints_are_the_committed_ones():
    """The fixtures are data, not remade by the test: SHA256SUMS pins them, so a change of them is a visible change of
    this test's inputs (remake them with the script named in preset.json, then update SHA256SUMS)."""
    meta = json.loads((FOLDER / "preset.json").read_text())
    assert meta["made_by"] == "python scripts/make_behaviour_checkpoints.py"
    for line in (FOLDER / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((FOLDER / name).read_bytes()).hexdigest() == digest, name
