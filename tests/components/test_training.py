import contextlib

import numpy as np
import torch

from components import training
from components.config import apply_overrides
from components.data import make_shapes, to_model_input
from components.presets import get_preset
from components.timestep_sampler import LossSecondMomentResampler, UniformSampler
from components.training import Learner


def _batch(n=16):
    images, labels, _ = make_shapes(n, 16, 4, seed=0)
    return to_model_input(images), torch.from_numpy(labels)


def test_loss_second_moment_sampler_prefers_high_loss_timesteps():
    sampler = LossSecondMomentResampler(4, seed=0)
    assert np.allclose(sampler.weights(), 1)
    for _ in range(10):
        sampler.update(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 1.0, 4.0]))
    w = sampler.weights()
    assert sampler.warmed_up() and np.isclose(w.sum(), 1) and w[3] > 3.9 * w[0]
    t, weights = sampler.sample(1000, "cpu")
    assert (t == 3).float().mean() > 0.5
    assert torch.allclose(weights[t == 3][0], torch.tensor(1 / (4 * w[3]), dtype=torch.float32))


def test_uniform_sampler_state_round_trip():
    a = UniformSampler(100, seed=3)
    a.sample(5, "cpu")
    b = UniformSampler(100, seed=9)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample(8, "cpu")[0], b.sample(8, "cpu")[0])


def test_microbatches_accumulate_the_same_gradient(monkeypatch):
    # float32 throughout: under bf16 autocast (CPUs with native bf16) a 4-row microbatch rounds differently from the
    # whole batch, which says nothing about how gradients accumulate
    monkeypatch.setattr(training, "autocast_context", lambda device: contextlib.nullcontext())
    x, y = _batch()
    preset = get_preset("smoke")
    grads = []
    for micro in (-1, 4):
        p = apply_overrides(preset, [f"train_evaluator.microbatch={micro}"])
        learner = Learner("evaluator", p, torch.device("cpu"), seed=0)
        learner.opt.step = lambda: None  # look at the accumulated gradient, not the update
        learner.train_step(x, y)
        grads.append(torch.cat([q.grad.flatten() for q in learner.net.parameters() if q.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_resume_continues_exactly(tmp_path):
    x, y = _batch()
    preset = get_preset("smoke")
    straight = Learner("diffusion", preset, torch.device("cpu"), seed=1)
    for _ in range(4):
        straight.train_step(x, y)
    first = Learner("diffusion", preset, torch.device("cpu"), seed=1)
    for _ in range(2):
        first.train_step(x, y)
    first.save(tmp_path, config={})
    resumed = Learner("diffusion", preset, torch.device("cpu"), seed=7)
    resumed.load(tmp_path)
    for _ in range(2):
        resumed.train_step(x, y)
    assert resumed.step == 4
    for a, b in zip(straight.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema[0.99], resumed.ema[0.99]):
        assert torch.equal(a, b)


def test_channels_last_and_compile_train_like_eager(tmp_path):
    """The speed options (on by default on CUDA only) change the memory format and the kernels, not the maths, and
    never the checkpoint: same first-step loss and updated weights as eager, same state_dict keys."""
    x, y = _batch(8)
    results = []
    for setting in ("off", "on"):
        preset = apply_overrides(get_preset("smoke"), [f"train_diffusion.compile={setting}",
                                                       f"train_diffusion.channels_last={setting}"])
        learner = Learner("diffusion", preset, torch.device("cpu"), seed=0)
        metrics = learner.train_step(x, y)
        learner.save(tmp_path / setting, config={})
        results.append((metrics["loss"], learner.net.state_dict()))
    (loss_eager, eager), (loss_fast, fast) = results
    assert list(fast) == list(eager)
    assert abs(loss_fast - loss_eager) < 1e-4 * max(1.0, abs(loss_eager))
    for key in eager:
        assert torch.allclose(fast[key], eager[key], atol=1e-5), key
    assert fast["input_blocks.0.0.weight"].is_contiguous(memory_format=torch.channels_last)
    reloaded = Learner("diffusion", get_preset("smoke"), torch.device("cpu"))
    reloaded.load(tmp_path / "on")
    assert torch.equal(reloaded.net.state_dict()["out.2.weight"], fast["out.2.weight"])


def test_cuda_graphs_only_where_compiled_on_cuda():
    """`graphed` is the one place that decides whether the trainer replays CUDA graphs (and marks each step)."""
    from components.precision import graphed

    assert graphed("cuda", "auto", "auto") and graphed("cuda", "on", "on")
    assert not graphed("cuda", "off", "on")  # graphs come from the compiled step: no compile, no graphs
    assert not graphed("cuda", "auto", "off")
    assert not graphed("cpu", "on", "on") and not graphed("cpu", "auto", "auto")
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.compile=on", "train_diffusion.cuda_graphs=on"])
    assert not Learner("diffusion", preset, torch.device("cpu")).graphs
