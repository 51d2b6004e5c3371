"""Evaluation while training, the pure parts (issue 24): the held-out split's content rule, the fixed per-quartile
draws and the classifier's held-out scores against x_t written out from the closed form of q(x_t | x_0), and the fixed
sample set."""

import numpy as np
import pytest
import torch

from components.config.presets import get_preset
from components.diffusion import create_diffusion
from components.images import validation_mask
from components.networks import build_network
from components.sampling import sample_label, sample_seed
from components.train_eval import QUARTILES, classifier_scores, fixed_set, quartile_draws, sample_fixed_set


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), rng.integers(0, 10, n)


def test_validation_mask_depends_on_each_image_alone():
    images, labels = _images(4000)
    mask = validation_mask(images, labels, 0.1)
    assert abs(mask.mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / 4000)  # a tenth, within 4 standard errors
    order = np.random.default_rng(1).permutation(4000)
    assert np.array_equal(validation_mask(images[order], labels[order], 0.1), mask[order])  # not by position
    assert np.array_equal(np.concatenate([validation_mask(images[:7], labels[:7], 0.1),
                                          validation_mask(images[7:], labels[7:], 0.1)]), mask)  # nor by batch
    assert not validation_mask(images, labels, 0.0).any()
    assert (mask <= validation_mask(images, labels, 0.2)).all()  # a larger fraction only adds images
    relabelled = validation_mask(images, (labels + 1) % 10, 0.1)
    assert not np.array_equal(relabelled, mask)  # the label is part of the key


def test_quartile_draws_are_fixed_and_inside_their_quartile():
    for q in range(QUARTILES):
        t, noise = quartile_draws(64, 1000, q, (3, 4, 4), seed=0)
        assert int(t.min()) >= 250 * q and int(t.max()) < 250 * (q + 1)
        t2, noise2 = quartile_draws(64, 1000, q, (3, 4, 4), seed=0)
        assert torch.equal(t, t2) and torch.equal(noise, noise2)
    assert not torch.equal(quartile_draws(8, 1000, 0, (3,), 0)[1], quartile_draws(8, 1000, 0, (3,), 1)[1])


def test_classifier_scores_against_x_t_from_the_closed_form(one_thread):
    preset = get_preset("smoke")
    torch.manual_seed(0)
    net = build_network("classifier", preset).eval()
    diffusion = create_diffusion(preset.diffusion, "")
    x0, y = torch.rand(12, 3, 16, 16) * 2 - 1, torch.randint(0, 4, (12,))
    scores = classifier_scores(net, diffusion, x0, y, noised=True, seed=3)
    abar = torch.as_tensor(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), dtype=torch.float64)  # linear schedule
    losses = []
    for q in range(QUARTILES):
        t, noise = quartile_draws(12, 1000, q, (3, 16, 16), seed=3)
        a = abar[t].float()[:, None, None, None]
        with torch.no_grad():
            logits = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t)
        assert scores[f"val_accuracy_q{q}"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
        losses.append(float(torch.nn.functional.cross_entropy(logits, y)))
    assert scores["val_loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert net.training is False and classifier_scores(net.train(), diffusion, x0, y, True, seed=3) == scores
    assert net.training  # left as it was found


def test_fixed_sample_set_repeats_and_has_the_sample_stages_labels(one_thread):
    preset = get_preset("smoke")
    torch.manual_seed(0)
    unet = build_network("diffusion", preset).eval()
    classifier = build_network("classifier", preset).eval()
    seeds, labels = fixed_set(6, 4)
    assert seeds == [sample_seed(0, i) for i in range(6)] and labels == [sample_label(s, 4) for s in seeds]
    args = (preset.diffusion, preset.unet, 6, 4, "cpu")
    plain = sample_fixed_set(unet, *args)
    assert plain.shape == (6, 16, 16, 3) and plain.dtype == np.uint8
    assert np.array_equal(sample_fixed_set(unet, *args), plain)
    assert np.array_equal(sample_fixed_set(unet, *args, classifier=classifier, scale=0.0), plain)  # scale 0: unguided
    assert not np.array_equal(sample_fixed_set(unet, *args, classifier=classifier, scale=50.0), plain)
