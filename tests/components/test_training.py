import contextlib

import numpy as np
import torch

from components import training
from components.config import apply_overrides
from components.config.presets import get_preset
from components.images import make_shapes, to_model_input
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


def _perturb(net: torch.nn.Module) -> torch.nn.Module:
    """Every parameter + 0.02 * N(0, 1) from a fixed generator: the zero-initialised output layers (zero_module) would
    otherwise make the first loss independent of the network body and leave every other layer without gradient."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator).to(p.dtype))
    return net


def _float32(monkeypatch):
    # float32 throughout: under bf16 autocast (CPUs with native bf16) a different kernel or split rounds differently,
    # which says nothing about the maths these tests compare
    monkeypatch.setattr(training, "autocast_context", lambda device, precision: contextlib.nullcontext())


def test_microbatches_accumulate_the_same_gradient(monkeypatch):
    _float32(monkeypatch)
    x, y = _batch()
    preset = get_preset("smoke")
    grads = []
    for micro in (-1, 4):
        p = apply_overrides(preset, [f"train_evaluator.microbatch={micro}"])
        learner = Learner("evaluator", p, torch.device("cpu"), seed=0)
        _perturb(learner.net)
        learner.opt.step = lambda: None  # look at the accumulated gradient, not the update
        learner.train_step(x, y)
        grads.append({name: q.grad for name, q in learner.net.named_parameters()})
    whole, micro = grads
    flowing = [g is not None and bool(g.abs().max() > 1e-6) for g in whole.values()]
    assert sum(flowing) >= 0.9 * len(flowing), f"gradient reaches only {sum(flowing)} of {len(flowing)} tensors"
    for name, a in whole.items():
        b = micro[name]
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), name


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


def test_channels_last_and_compile_train_like_eager(tmp_path, monkeypatch):
    """The speed options (on by default on CUDA only) change the memory format and the kernels, not the maths, and
    never the checkpoint: from the same perturbed weights, three steps give the same losses and the same gradient in
    every tensor as eager, and the same weights after them; same state_dict keys. float32, so that the tolerances
    measure compile and channels_last rather than bf16 rounding."""
    _float32(monkeypatch)
    x, y = _batch(8)
    runs = []
    for setting in ("off", "on"):
        preset = apply_overrides(get_preset("smoke"), [f"train_diffusion.compile={setting}",
                                                       f"train_diffusion.channels_last={setting}"])
        learner = Learner("diffusion", preset, torch.device("cpu"), seed=0)
        start = {k: v.clone() for k, v in _perturb(learner.net).state_dict().items()}
        steps = []
        for _ in range(3):
            metrics = learner.train_step(x, y)
            steps.append((metrics["loss"], [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                            for p in learner.net.parameters()]))
        learner.save(tmp_path / setting, config={})
        runs.append((steps, learner.net.state_dict()))
    (eager_steps, eager), (fast_steps, fast) = runs
    assert list(fast) == list(eager)
    for (loss_eager, grads_eager), (loss_fast, grads_fast) in zip(eager_steps, fast_steps):
        assert abs(loss_fast - loss_eager) < 1e-5 * abs(loss_eager)
        total = torch.cat([g.flatten() for g in grads_eager]).norm()
        assert sum(bool(g.abs().max() > 1e-6) for g in grads_eager) >= 0.9 * len(grads_eager)  # the whole body learns
        # per tensor, with a floor for biases in front of a GroupNorm, whose gradient is rounding noise (~1e-9)
        for name, a, b in zip(dict(learner.net.named_parameters()), grads_eager, grads_fast):
            assert (b - a).norm() <= 1e-3 * a.norm() + 1e-6 * total, name
    # Adam turns the sign of those noise gradients into +-lr steps, so the weights are compared as a whole
    moved = torch.cat([(eager[k] - start[k]).flatten() for k in eager]).norm()
    apart = torch.cat([(fast[k] - eager[k]).flatten() for k in eager]).norm()
    assert apart < 1e-2 * moved
    assert fast["input_blocks.0.0.weight"].is_contiguous(memory_format=torch.channels_last)
    reloaded = Learner("diffusion", get_preset("smoke"), torch.device("cpu"))
    reloaded.load(tmp_path / "on")
    for key in fast:
        assert torch.equal(reloaded.net.state_dict()[key], fast[key]), key


def test_cuda_graphs_only_where_compiled_on_cuda():
    """The settings decide whether the trainer replays CUDA graphs (and marks each step): compiled, on CUDA, with
    cuda_graphs auto or on, one worker."""
    from components.precision import configured
    from components.training import trainer_candidates

    assert configured("cuda", compile="on", cuda_graphs="auto").cuda_graphs
    assert not configured("cuda", compile="off", cuda_graphs="on").cuda_graphs  # no compile, no graphs
    assert not configured("cuda", compile="on", cuda_graphs="off").cuda_graphs
    assert not configured("cpu", compile="on", cuda_graphs="on").cuda_graphs
    cfg = get_preset("smoke").train_diffusion
    assert all(c.cuda_graphs for c in trainer_candidates(cfg, torch.device("cuda")))  # if compiled, graphed
    assert not any(c.cuda_graphs for c in trainer_candidates(cfg, torch.device("cuda"), world=2))  # DDP: plain
    assert not any(c.cuda_graphs for c in trainer_candidates(cfg, torch.device("cpu")))
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.compile=on", "train_diffusion.cuda_graphs=on"])
    assert not Learner("diffusion", preset, torch.device("cpu")).graphs


def test_a_checkpoint_resumes_in_the_other_memory_format_as_in_its_own(tmp_path, monkeypatch):
    """A checkpoint saved in NCHW and resumed with channels_last (or back): the optimizer's moments take their
    parameters' memory format, so the next steps equal those of a resume in the checkpoint's own format. Without it
    the moments keep the saved strides and the fused AdamW update pairs the wrong elements."""
    from components.precision import SpeedSettings

    _float32(monkeypatch)
    x, y = _batch(8)
    preset = apply_overrides(get_preset("smoke"), ["train_diffusion.lr=0.01"])
    for saved, resumed in ((False, True), (True, False)):
        first = Learner("diffusion", preset, torch.device("cpu"), seed=0, settings=SpeedSettings("fp32", saved))
        for _ in range(2):
            first.train_step(x, y)
        first.save(tmp_path / f"cl-{saved}", config={})
        after = {}
        for layout in (saved, resumed):
            learner = Learner("diffusion", preset, torch.device("cpu"), seed=0, settings=SpeedSettings("fp32", layout))
            learner.load(tmp_path / f"cl-{saved}")
            for p in learner.net.parameters():
                assert all(v.stride() == p.stride() for v in learner.opt.state[p].values() if v.shape == p.shape)
            for _ in range(2):
                learner.train_step(x, y)
            after[layout] = {k: v.clone() for k, v in learner.net.state_dict().items()}
        for name, value in after[saved].items():
            assert torch.allclose(after[resumed][name], value, atol=1e-5, rtol=1e-4), name
