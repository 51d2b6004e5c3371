"""The loss-aware timestep sampler against the released LossSecondMomentResampler's closed form: p_t proportional to
sqrt(E[L_t^2]) over the last 10 losses at t, mixed as p (1 - 0.001) + 0.001 / T, importance weights 1 / (T p_t)."""

import numpy as np
import torch

from components.timestep_sampler import LossSecondMomentResampler


def test_weights_closed_form():
    sampler = LossSecondMomentResampler(3, seed=0)
    for _ in range(5):  # t = 0: losses 1 and 3 alternating, sqrt(E[L^2]) = sqrt(5); t = 1: 2; t = 2: 4
        sampler.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 4.0]))
        sampler.update(torch.tensor([0, 1, 2]), torch.tensor([3.0, 2.0, 4.0]))
    root = np.array([np.sqrt(5.0), 2.0, 4.0])
    expected = root / root.sum() * 0.999 + 0.001 / 3
    assert np.allclose(sampler.weights(), expected, rtol=1e-12, atol=0)
    t, weights = sampler.sample(50, "cpu")
    assert torch.allclose(weights, torch.from_numpy(1 / (3 * expected[t.numpy()])).float())


def test_history_keeps_the_last_ten_losses():
    sampler = LossSecondMomentResampler(2, seed=0)
    for loss in [1.0] * 10 + [3.0] * 10:  # the ten 1s are pushed out by the ten 3s
        sampler.update(torch.tensor([0, 1]), torch.tensor([loss, 1.0]))
    assert np.allclose(sampler.weights(), np.array([0.75, 0.25]) * 0.999 + 0.0005, rtol=1e-12, atol=0)
