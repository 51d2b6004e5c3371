"""One training step and the complete training state, for each network of the system (pure PyTorch).

* diffusion: the UNet with the hybrid loss (L_simple + L_vlb), timesteps from the configured sampler
  (Nichol & Dhariwal 2021, Sec. 3); AdamW, EMA of the weights at each rate.
* classifier: the noisy classifier p(y | x_t, t) with cross-entropy on x_t ~ q(x_t | x_0) at uniform t and an
  optional linear lr anneal (Dhariwal & Nichol 2021, Sec. 4 and the released classifier_train.py).
* evaluator: a classifier of clean images (t = 0, no noise), used only to score samples, never for guidance.
* upsampler: ADM-U with the hybrid loss on (clean image, its area downsample) pairs, as the released
  super_res_train.py makes them per batch (no blur or noise augmentation), under its own diffusion process; with
  train_upsampler.low_res_noise > 0, conditioning augmentation: Gaussian noise of a uniform random level on the
  low-resolution input, the level given to the network (Ho et al. 2021's cascades).

The Ray worker (pipelines/train_worker.py) wraps a Learner: data, reporting and tracking live there.
"""

import copy
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import ema_init_share, load_into, save_weights, update_ema
from .config import Preset
from .config.kinds import kind as network_kind
from .diffusion import create_diffusion
from .losses import classifier_losses, topk_correct, training_losses
from .networks import build_network
from .precision import (
    Choice,
    SpeedSettings,
    autocast_context,
    candidates,
    configured,
    decide_compile,
    kept_rng,
    measure_choice,
    speed_up,
    sync_for,
)
from .sampling import SampleNoise, class_conditional, ddim_sample
from .superres import augment_low_res, downsample_area, upsample_bilinear
from .timestep_sampler import create_timestep_sampler


def ema_warmup_decay(step: int, rate: float, inv_gamma: float, power: float) -> float:
    """The EMA decay of update `step` (0 for the first) under k-diffusion's EMAWarmup: 1 - (1 + step / inv_gamma)
    ** -power, clipped to [0, rate]. It is 0 at the first update, so the average starts from the trained weights and
    not from the random init, and rises to `rate` (0.9999 at 215k updates with inv_gamma 1, power 3/4)."""
    return min(rate, max(0.0, 1.0 - (1.0 + step / inv_gamma) ** -power))


def ema_warmup_on(cfg) -> bool:
    """Whether a trainer with TrainConfig `cfg` warms its EMA up: `auto` means for a random init only (weights from
    init_from are already good: warming up would let the first noisy steps overwrite them in the average)."""
    return cfg.ema_warmup == "on" or (cfg.ema_warmup == "auto" and not cfg.init_from)


def ema_initial_share(cfg, rate: float) -> float:
    """Weight of the initial parameters in the EMA at `rate` after the whole run (0 with the warm-up: its first
    decay is 0)."""
    return 0.0 if ema_warmup_on(cfg) else ema_init_share(rate, cfg.steps)


def trainer_candidates(cfg, device: torch.device, world: int = 1) -> list[SpeedSettings]:
    """The eager settings a trainer times (TrainConfig `cfg`'s precision and channels_last), each marked to replay
    CUDA graphs if it ends up compiled on CUDA (cuda_graphs auto or on, one-worker trainers: DDP compiles plainly)."""
    graphs = torch.device(device).type == "cuda" and cfg.cuda_graphs in ("auto", "on") and world == 1
    return [dataclasses.replace(c, cuda_graphs=graphs) for c in candidates(device, cfg.precision, cfg.channels_last)]


def training_trial(kind: str, preset: Preset, device: torch.device, seed: int = 0):
    """trial(settings) -> one training step in those settings of a throwaway Learner of the trainer's network and
    batch, on a fixed random batch: what precision.measure_choice times. The trainer's own weights, optimizer, EMA
    and timestep sampler never see the trial steps."""
    learner = Learner(kind, preset, device, seed)
    cfg = learner.network.network_config(preset)
    generator = torch.Generator().manual_seed(seed)
    shape = (learner.cfg.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)
    x0 = (torch.rand(shape, generator=generator) * 2 - 1).to(learner.device)
    y = torch.randint(0, cfg.num_classes or 1, shape[:1], generator=generator).to(learner.device)
    compiled = {}

    def trial(settings: SpeedSettings):
        learner.settings, learner.graphs = settings, settings.compile and settings.cuda_graphs
        if settings.compile and settings not in compiled:
            compiled[settings] = speed_up(learner.net, settings)
        learner.fast = compiled[settings] if settings.compile else speed_up(learner.net, settings)
        return lambda: learner.train_step(x0, y)

    return trial


def training_choice(kind: str, preset: Preset, device: torch.device, cands: list[SpeedSettings],
                    compile: str = "auto", seed: int = 0, cached: Choice | None = None, timer=None
                    ) -> Choice:
    """The measured settings of a trainer: trial steps of every candidate (components/precision.py), torch.compile
    where the run's steps repay it; with `cached`, only compile is timed, for those settings. The global RNG streams
    are left as they were, so training after the choice is the same whether it was measured or read from a cache."""
    steps = network_kind(kind).train_config(preset).steps
    with kept_rng(device):
        trial = training_trial(kind, preset, device, seed)
        if cached is not None:
            return decide_compile(cached, trial, steps, timer=timer, sync=sync_for(device))
        return measure_choice(trial, cands, compile, steps, timer=timer, sync=sync_for(device))


class Learner:
    """Network, optimizer, EMA, timestep sampler and step counter of one trainer."""

    def __init__(self, kind: str, preset: Preset, device: torch.device, seed: int = 0,
                 settings: SpeedSettings | None = None):
        self.kind, self.preset, self.device = kind, preset, torch.device(device)
        self.network = network_kind(kind)
        self.cfg = self.network.train_config(preset)
        torch.manual_seed(seed)
        self.net = build_network(self.network, preset).to(self.device)
        # arithmetic, memory format and compile of train_step: the trainer's measured choice (pipelines/infra/
        # speed.py), or without one what the config sets (auto: the plain float32 path)
        self.settings = settings or configured(self.device, self.cfg.precision, self.cfg.channels_last,
                                               self.cfg.compile, self.cfg.cuda_graphs)
        self.fast = speed_up(self.net, self.settings)
        self.graphs = self.settings.compile and self.settings.cuda_graphs
        self.diffusion = create_diffusion(self.network.process_config(preset), "")
        # one fused kernel for the whole AdamW update (CUDA and CPU) instead of a loop over ~200 tensors
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                     fused=self.device.type in ("cuda", "cpu"))
        self.ema = {rate: [p.detach().clone() for p in self.net.parameters()] for rate in self.cfg.ema_rate}
        self.sampler = create_timestep_sampler(self.cfg.schedule_sampler, self.diffusion.num_timesteps, seed)
        self.step = 0

    # --- one optimisation step ----------------------------------------------------------------------------------------
    def lr(self) -> float:
        if not self.cfg.anneal_lr:
            return self.cfg.lr
        return self.cfg.lr * (1 - self.step / self.cfg.steps)

    def _terms(self, model, x0, y, t):
        if self.network.is_unet:
            kwargs = {"y": self.drop_labels(y)} if self.network.network_config(self.preset).num_classes is not None \
                else {}
            if self.network.upsamples:
                kwargs.update(self.low_res(x0))
            return training_losses(self.diffusion, model, x0, t, kwargs)
        if self.network.noised:
            return classifier_losses(self.diffusion, model, x0, y, t)
        logits = model(x0, torch.zeros_like(t)).float()  # a classifier of clean images
        return {"loss": torch.nn.functional.cross_entropy(logits, y, reduction="none"), **topk_correct(logits, y)}

    def low_res(self, x0: torch.Tensor) -> dict:
        """An upsampler's conditioning for clean images x0: low_res, their area downsample to small_size (the released
        training pairs); with conditioning augmentation (cfg.low_res_noise > 0) plus Gaussian noise of a level drawn
        per image from U[0, low_res_noise], which the network is given as low_res_sigma."""
        low_res = downsample_area(x0, self.network.network_config(self.preset).small_size)
        level = self.cfg.low_res_noise
        if level <= 0:
            return {"low_res": low_res}
        sigma = torch.rand(x0.shape[0], device=x0.device) * level
        return {"low_res": augment_low_res(low_res, sigma, torch.randn_like(low_res)), "low_res_sigma": sigma}

    def drop_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Label dropout of classifier-free guidance: each label becomes the null class with p = label_dropout."""
        p = self.cfg.label_dropout
        if p <= 0:
            return y
        return torch.where(torch.rand(y.shape, device=y.device) < p, self.net.null_label, y)

    def hot(self, module):
        """`module` (e.g. the DDP wrapper of self.net) compiled when this trainer compiles (without CUDA graphs)."""
        if not self.settings.compile:
            return module
        return torch.compile(module)

    def train_step(self, x0: torch.Tensor, y: torch.Tensor, model=None, gather=None) -> dict:
        """One step on a batch (split in microbatches); returns scalar metrics. `model` may be a DDP wrapper."""
        if model is None and self.graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: the last step's graph outputs are done
        model = model or self.fast
        self.net.train()
        for group in self.opt.param_groups:
            group["lr"] = self.lr()
        self.opt.zero_grad(set_to_none=True)
        batch = x0.shape[0]
        micro = batch if self.cfg.microbatch <= 0 else self.cfg.microbatch
        logs = []
        for start in range(0, batch, micro):
            xb, yb = x0[start:start + micro], y[start:start + micro]
            t, weights = self.sampler.sample(xb.shape[0], self.device)
            if not self.network.noised:
                t = torch.zeros_like(t)
            with autocast_context(self.device, self.settings.precision):
                terms = self._terms(model, xb, yb, t)
            loss = (terms["loss"] * weights).mean() * (xb.shape[0] / batch)
            loss.backward()
            all_t, all_loss = (t, terms["loss"]) if gather is None else gather(t, terms["loss"])
            self.sampler.update(all_t, all_loss)
            logs.append((t, {k: v.detach() for k, v in terms.items()}))
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip or float("inf"))
        self.opt.step()
        for rate, params in self.ema.items():
            update_ema(params, self.net.parameters(), self.ema_decay(rate))
        self.step += 1
        return {**self._summarise(logs), "grad_norm": float(grad_norm), "lr": self.lr()}

    def ema_decay(self, rate: float) -> float:
        """The decay of this step's EMA update at `rate` (the warm-up's, while it is below `rate`)."""
        if not ema_warmup_on(self.cfg):
            return rate
        return ema_warmup_decay(self.step, rate, self.cfg.ema_warmup_inv_gamma, self.cfg.ema_warmup_power)

    def warm_start(self, state: dict, source: str) -> None:
        """Start from `state` (train_<kind>.init_from) instead of the random init: the network and every EMA, so the
        average begins at the initial weights too. Strict: CheckpointError names what does not fit."""

        load_into(self.net, state, source=source)
        for params in self.ema.values():
            for e, p in zip(params, self.net.parameters()):
                e.copy_(p.detach())

    def _summarise(self, logs) -> dict:
        t = torch.cat([tt for tt, _ in logs])
        out = {}
        for key in logs[0][1]:
            values = torch.cat([terms[key] for _, terms in logs]).float()
            out[key] = float(values.mean())
            if not self.network.noised:
                continue
            quartile = (4 * t / self.diffusion.num_timesteps).long()
            for q in range(4):
                if (quartile == q).any():
                    out[f"{key}_q{q}"] = float(values[quartile == q].mean())
        return out

    # --- samples to watch training ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, per_class: int = 1, steps: str = "ddim25", seed: int = 0) -> torch.Tensor:
        """DDIM samples from the EMA weights (first rate), one row per class: [-1, 1] tensor [N, C, H, W]."""
        net = self.ema_network()
        classes = self.preset.unet.num_classes or 1
        labels = torch.arange(classes, device=self.device).repeat_interleave(per_class)
        cfg = self.preset.unet
        noise = SampleNoise([seed + i for i in range(len(labels))], (cfg.in_channels, cfg.image_size, cfg.image_size),
                            self.device)
        kwargs = {"y": labels} if cfg.num_classes is not None else {}
        with autocast_context(self.device, self.settings.precision):
            return ddim_sample(net, create_diffusion(self.preset.diffusion, steps), noise, kwargs)

    @torch.no_grad()
    def upsample_grid(self, large: torch.Tensor, labels: torch.Tensor, steps: str = "ddim25", seed: int = 0
                      ) -> torch.Tensor:
        """An upsampler's progress at a glance: three rows for the clean images `large` [N, C, H, W] in [-1, 1]
        (labels [N]): their area downsample brought back bilinearly, the EMA weights' DDIM upsampling of it (no
        augmentation, level 0), and the originals: [-1, 1] tensor [3N, C, H, W]."""
        net = self.ema_network()
        cfg = self.network.network_config(self.preset)
        low_res = downsample_area(large, cfg.small_size)
        noise = SampleNoise([seed + i for i in range(len(large))], tuple(large.shape[1:]), self.device)
        kwargs = {"low_res": low_res, "y": labels}
        if getattr(net, "noise_level", False):
            kwargs["low_res_sigma"] = torch.zeros(len(large), device=self.device)
        model = class_conditional(net, cfg.num_classes is not None)
        with autocast_context(self.device, self.settings.precision):
            made = ddim_sample(model, create_diffusion(self.network.process_config(self.preset), steps), noise,
                               kwargs)
        return torch.cat([upsample_bilinear(low_res, tuple(large.shape[-2:])), made.float(), large])

    @torch.no_grad()
    def ema_network(self) -> torch.nn.Module:
        """A copy of the network in eval mode holding the weights that are logged and registered: the EMA of the
        first rate, or the trained weights when the trainer keeps no EMA."""
        net = copy.deepcopy(self.net).eval()
        if self.ema:
            for p, e in zip(net.parameters(), next(iter(self.ema.values()))):
                p.copy_(e)
        return net

    # --- state ------------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path, config: dict) -> None:
        """Everything needed to resume exactly: weights, EMA, optimizer, step, sampler and RNG state."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # whether the network runs unconditionally (has the null class of classifier-free guidance), readable
        # without building it
        unconditional = getattr(self.net, "null_label", None) is not None
        noise_level = bool(getattr(self.net, "noise_level", False))  # an upsampler's conditioning augmentation
        save_weights(self.net.state_dict(), folder / "model.safetensors",
                     config={**config, "unconditional": unconditional, "noise_level": noise_level})
        names = [n for n, _ in self.net.named_parameters()]
        for rate, params in self.ema.items():
            save_weights(dict(zip(names, params)), folder / f"ema_{rate}.safetensors")
        torch.save(self.opt.state_dict(), folder / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(folder / "rng.safetensors"))
        state = {"step": self.step, "kind": self.kind, "sampler": self.sampler.state_dict()}
        (folder / "state.json").write_text(json.dumps(state))

    def load(self, folder: str | Path) -> None:
        folder = Path(folder)
        load_into(self.net, folder / "model.safetensors", source=str(folder))
        for rate, params in self.ema.items():
            ema = load_file(str(folder / f"ema_{rate}.safetensors"))
            for (name, _), p in zip(self.net.named_parameters(), params):
                p.copy_(ema[name].to(p.device))
        self.opt.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True))
        # the moments in their parameters' memory format: a checkpoint saved in another layout (channels_last on or
        # off) keeps its strides through load_state_dict, and the fused AdamW kernel would pair the wrong elements
        for p in self.net.parameters():
            for name, value in self.opt.state.get(p, {}).items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    self.opt.state[p][name] = torch.empty_like(p, dtype=value.dtype).copy_(value)
        rng = load_file(str(folder / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        state = json.loads((folder / "state.json").read_text())
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
