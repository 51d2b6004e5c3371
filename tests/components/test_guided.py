"""The one guidance composition (components/guided.py): a batch's cells -> the model and cond_fn a loop takes, and a
batch from seeds and labels to images. Checked against the guidance terms built by hand for each row (the methods'
own tests check those terms against the released code and closed forms), bytewise where the batch is the same."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from components import build_classifier, build_unet
from components.config.grid import Cell
from components.diffusion import create_diffusion
from components.guidance import ClassifierFreeGuidance, ClassifierGuidance, trained_sigmas
from components.guided import GuidedNetworks, compose, row_intervals, sample_batch
from components.images import to_uint8
from components.sampling import SampleNoise, ddim_sample, sample_label, sample_seed
from tests.components.test_sampling import CFG as PROCESS
from tests.components.test_sampling import CLF, UNET, _random

pytestmark = pytest.mark.usefixtures("one_thread")

NULL = 4  # UNET's 4 classes, then the null class
SIGMAS = trained_sigmas(PROCESS)
SEEDS = [sample_seed(5, i) for i in range(3)]
LABELS = [sample_label(s, 4) for s in SEEDS]


@pytest.fixture(scope="module")
def nets():
    model, classifier = _random(build_unet(UNET, null_class=True), 0), _random(build_classifier(CLF), 1)
    return GuidedNetworks(model, UNET, PROCESS, "cpu", null_label=NULL, classifier=classifier)


def _direct(respacing, model, cond_fn, loop=ddim_sample):
    """The loop run by hand on the same per-sample noise and labels."""
    noise = SampleNoise(SEEDS, (UNET.in_channels, UNET.image_size, UNET.image_size))
    x_0 = loop(model, create_diffusion(PROCESS, respacing), noise, {"y": torch.tensor(LABELS)}, cond_fn=cond_fn)
    return to_uint8(x_0)


@pytest.mark.parametrize("cell", [Cell("ddim10", 3.0), Cell("ddim10", 3.0, (0.5, 5.0)), Cell("ddim10", 0.0)])
def test_a_classifier_cell_is_classifier_guidance_at_its_scale_and_interval(nets, cell):
    images, cost = sample_batch(nets, [cell] * 3, SEEDS, LABELS)
    term = ClassifierGuidance(nets.classifier, cell.scale, cell.interval, SIGMAS) if cell.scale else None
    assert images.tobytes() == _direct("ddim10", nets.model, term).tobytes()
    if cell.scale == 0:  # the classifier never runs at scale 0
        assert cost.classifier_passes == [0, 0, 0] and cost.network_evals == [10, 10, 10]


@pytest.mark.parametrize("method", ["cfg", "both"])
def test_cfg_and_both_cells_are_their_terms_at_the_cells_scale(nets, method):
    """One scale s for every method: CFG's eps_c + s (eps_c - eps_u), and for `both` the classifier's s grad log p on
    top, each at the cell's own s."""
    cell = Cell("ddim10", 2.0, (0.5, 5.0), method)
    images, cost = sample_batch(nets, [cell] * 3, SEEDS, LABELS)
    model = ClassifierFreeGuidance(nets.model, 2.0, NULL, cell.interval, SIGMAS)
    term = ClassifierGuidance(nets.classifier, 2.0, cell.interval, SIGMAS) if method == "both" else None
    assert images.tobytes() == _direct("ddim10", model, term).tobytes()
    assert all(n > 10 for n in cost.network_evals)  # a second pass inside the interval
    assert (max(cost.classifier_passes) > 0) == (method == "both")


def test_a_mixed_batch_guides_each_row_as_its_cell_says(nets):
    """Rows of three methods, two scales and two intervals in one batch: each row equals its cell sampled alone (not
    bytewise: the forward pass holds other rows, and fp32 convolutions round with the batch, ~1e-7)."""
    cells = [Cell("dpm++2m-5", 4.0), Cell("dpm++2m-5", 1.0, (0.5, 5.0), "cfg"), Cell("dpm++2m-5", 2.0, None, "both")]
    mixed, _ = sample_batch(nets, cells, SEEDS, LABELS)
    for i, cell in enumerate(cells):
        alone, _ = sample_batch(nets, [cell] * 3, SEEDS, LABELS)
        assert np.abs(mixed[i].astype(int) - alone[i].astype(int)).max() <= 1, cell.key


def test_compose_hands_each_term_its_rows_scales_and_intervals(nets):
    cells = [Cell("ddim10", 0.0), Cell("ddim10", 4.0), Cell("ddim10", 1.5, (0.3, 5.0), "cfg"),
             Cell("ddim10", 2.0, (0.1, 1.0), "both")]
    model, cond_fn = compose(nets, cells)
    assert isinstance(model, ClassifierFreeGuidance) and model.null_label == NULL
    assert list(model.scales) == [0.0, 0.0, 1.5, 2.0]  # the cell's s, not a CFG weight w = 1 + s
    assert cond_fn.scales.tolist() == [0.0, 4.0, 0.0, 2.0]
    lo, hi = model.interval
    assert lo.tolist() == [0.0, 0.0, 0.3, 0.1] and hi.tolist()[2:] == [5.0, 1.0] and math.isinf(hi[0])
    assert cond_fn.interval is model.interval
    # no interval anywhere: none passed (guidance at every level), and no CFG wrapper without a cfg row
    assert row_intervals(cells[:2]) is None
    model, cond_fn = compose(nets, cells[:2])
    assert model is nets.model and cond_fn.interval is None
    assert compose(nets, cells[:1]) == (nets.model, None)


def test_an_unconditional_model_ignores_the_labels(nets):
    unet = dataclasses.replace(UNET, num_classes=None)
    model = _random(build_unet(unet), 0)
    plain = GuidedNetworks(model, unet, PROCESS, "cpu")
    images, _ = sample_batch(plain, [Cell("ddim10", 0.0)] * 3, SEEDS, [0, 1, 2])
    again, _ = sample_batch(plain, [Cell("ddim10", 0.0)] * 3, SEEDS, [3, 3, 3])
    noise = SampleNoise(SEEDS, (UNET.in_channels, UNET.image_size, UNET.image_size))
    direct = to_uint8(ddim_sample(lambda x, t: model(x, t), create_diffusion(PROCESS, "ddim10"), noise))
    assert images.tobytes() == again.tobytes() == direct.tobytes()


def test_what_cannot_be_composed_is_refused(nets):
    no_null = GuidedNetworks(nets.model, UNET, PROCESS, "cpu", classifier=nets.classifier)
    with pytest.raises(ValueError, match="label dropout"):
        compose(no_null, [Cell("ddim10", 1.0, None, "cfg")])
    no_classifier = GuidedNetworks(nets.model, UNET, PROCESS, "cpu", null_label=NULL)
    with pytest.raises(ValueError, match="needs a noisy classifier"):
        compose(no_classifier, [Cell("ddim10", 1.0)])
    with pytest.raises(ValueError, match="one sampling loop"):
        sample_batch(nets, [Cell("ddim10", 1.0), Cell("ddim5", 1.0), Cell("ddim10", 0.0)], SEEDS, LABELS)
