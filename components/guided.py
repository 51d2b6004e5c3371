"""Guided sampling of a batch of grid cells, composed in one place (Dhariwal & Nichol 2021, Alg. 1 and 2; Ho &
Salimans 2022).

A cell (config/grid.py) is a sampler, a guidance method, a scale s and an interval of noise levels. One batch holds
rows of one sampler and any mix of the other three: scales and intervals are per-row tensors. ``compose`` turns the
rows' cells into what a sampling loop takes (sampling.py's signature):

* the model: the diffusion model, wrapped for classifier-free guidance when a row asks for it
  (guidance.ClassifierFreeGuidance at the rows' scales: eps_c + s (eps_c - eps_u));
* the cond_fn: the noisy classifier's gradient at the rows' scales (guidance.ClassifierGuidance: s grad log p(y|x_t)),
  when a row asks for it, added on top of the CFG eps for method ``both``;
* autoguidance's guide (guidance.Autoguidance: eps_main + s (eps_main - eps_guide)) around the model when a row asks
  for it.

Every method uses the cell's own s, the number the config and the report show: s = 0 is the conditional model for
all of them. ``sample_batch`` runs a batch from per-sample seeds and labels to uint8 images. The Ray sampling actors,
evaluation while training, the benchmarks and the tests call these two; nothing else builds a guidance term.

The cascade's second stage (ADM-U, Sec. 5.2) is the same composition at scale 0: ``upsample_batch`` samples an
upsampler (``GuidedNetworks`` of the super-resolution UNet and its own process) unguided, its low-resolution input
(the base samples) in the loop's model_kwargs as ``low_res``; only the base model is guided.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .compute import SampleCost
from .config.grid import Cell, parse_sampler
from .config.sections import DiffusionConfig, UNetConfig
from .diffusion import create_diffusion
from .guidance import Autoguidance, ClassifierFreeGuidance, ClassifierGuidance, trained_sigmas
from .images import to_model_input, to_uint8
from .sampling import SampleNoise, class_conditional, sampler_loop
from .superres import augment_low_res


@dataclass
class GuidedNetworks:
    """What a batch is sampled with, built once per process: the diffusion model (eps and variance channels out), its
    network config and trained process, and the networks that can guide it. ``null_label`` is the model's null class
    of classifier-free guidance (UNetModel.null_label; None: it was trained without label dropout)."""

    model: torch.nn.Module
    unet: UNetConfig
    process: DiffusionConfig
    device: torch.device
    null_label: int | None = None
    classifier: torch.nn.Module | None = None
    noise_level: bool = False  # an upsampler that takes the level of conditioning augmentation (low_res_sigma)
    guide: torch.nn.Module | None = None  # autoguidance's weaker network: same image size, channels and classes
    sigmas: np.ndarray = field(init=False)  # sigma_t of every trained timestep: guidance intervals are measured in it
    _samplers: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.sigmas = trained_sigmas(self.process)

    @property
    def conditional_model(self):
        """The diffusion model called as (x, t, y=...): an unconditional one ignores the labels guidance needs."""
        return class_conditional(self.model, self.unet.num_classes is not None)

    @property
    def conditional_guide(self):
        return class_conditional(self.guide, self.unet.num_classes is not None)

    def sampler(self, name: str):
        """(loop, respaced process) of a sampler string, built once."""
        if name not in self._samplers:
            spec = parse_sampler(name)
            self._samplers[name] = sampler_loop(spec), create_diffusion(self.process, spec.respacing)
        return self._samplers[name]


def row_intervals(cells: list[Cell]):
    """Per-row (lo, hi) noise-level bounds, or None when no row has an interval. A row guided at every level gets
    [0, inf], which guides exactly as no interval does."""
    if all(c.interval is None for c in cells):
        return None
    bounds = [c.interval or (0.0, float("inf")) for c in cells]
    return tuple(torch.tensor(b, dtype=torch.float64) for b in zip(*bounds))


def compose(nets: GuidedNetworks, cells: list[Cell], cost: SampleCost | None = None):
    """(model, cond_fn) of a batch whose row i belongs to cells[i]: a loop called with them guides every row as its
    cell says. cond_fn is None when no row asks for the classifier."""
    interval = row_intervals(cells)
    model, cond_fn = nets.conditional_model, None
    cfg_scales = [c.cfg_scale for c in cells]
    if any(s != 0 for s in cfg_scales):
        if nets.null_label is None:
            raise ValueError("classifier-free guidance needs a diffusion model trained with label dropout (a null "
                             "class); this one has none")
        model = ClassifierFreeGuidance(model, cfg_scales, nets.null_label, interval, nets.sigmas, cost)
    auto_scales = [c.auto_scale for c in cells]
    if any(s != 0 for s in auto_scales):
        if nets.guide is None:
            raise ValueError("autoguidance needs a guiding network (a smaller or earlier version of the model); none "
                             "was given")
        model = Autoguidance(model, nets.conditional_guide, auto_scales, interval, nets.sigmas, cost)
    classifier_scales = torch.tensor([c.classifier_scale for c in cells], dtype=torch.float32, device=nets.device)
    if bool((classifier_scales != 0).any()):
        if nets.classifier is None:
            raise ValueError("classifier guidance at a scale above 0 needs a noisy classifier; none was given")
        cond_fn = ClassifierGuidance(nets.classifier, classifier_scales, interval, nets.sigmas, cost)
    return model, cond_fn


def sample_batch(nets: GuidedNetworks, cells: list[Cell], seeds: list[int], labels: list[int],
                 clip_denoised: bool = True, eta: float = 0.0, conditioning: dict | None = None
                 ) -> tuple[np.ndarray, SampleCost]:
    """uint8 [N, H, W, C] samples of rows (cells[i], seeds[i], labels[i]), all of one sampler, and what each cost.
    Sample i depends on its own seed, label and cell only (per-sample noise streams), never on the batch.
    `conditioning`: more per-row model_kwargs ([N, ...] tensors: an upsampler's low_res)."""
    samplers = {c.sampler for c in cells}
    if len(samplers) != 1:
        raise ValueError(f"a batch runs one sampling loop; these rows name {sorted(samplers)}")
    loop, diffusion = nets.sampler(cells[0].sampler)
    cost = SampleCost(len(cells))
    model, cond_fn = compose(nets, cells, cost)
    shape = (nets.unet.in_channels, nets.unet.image_size, nets.unet.image_size)
    y = torch.tensor(labels, dtype=torch.long, device=nets.device)
    x_0 = loop(model, diffusion, SampleNoise(seeds, shape, nets.device), {"y": y, **(conditioning or {})},
               cond_fn=cond_fn, clip_denoised=clip_denoised, eta=eta, cost=cost)
    return to_uint8(x_0), cost


# the augmentation noise of sample i is drawn from its own stream, seeded apart from the sampling loop's
AUGMENT_SALT = 0x2545F4914F6CDD1D


def upsample_batch(nets: GuidedNetworks, sampler: str, seeds: list[int], labels: list[int], low_res: np.ndarray,
                   noise_level: float = 0.0, clip_denoised: bool = True, eta: float = 0.0
                   ) -> tuple[np.ndarray, SampleCost]:
    """uint8 [N, H, W, C] upsamplings of the uint8 [N, h, w, C] images `low_res` (base samples, labels[i] their
    classes) by the upsampler of `nets` with `sampler`, unguided, and what each cost. With `noise_level` > 0
    (conditioning augmentation) low_res gets Gaussian noise of that sigma first, from a stream seeded by seeds[i]
    (salted), and an upsampler trained with augmentation is told the level (0 when there is none). Row i depends on
    its seed, label and low_res only, never on the batch."""
    if noise_level and not nets.noise_level:
        raise ValueError(f"noise_level={noise_level:g} needs an upsampler trained with conditioning augmentation "
                         "(train_upsampler.low_res_noise > 0); this one was not")
    x = to_model_input(low_res).to(nets.device)
    conditioning = {"low_res": x}
    if noise_level:
        noise = SampleNoise([s ^ AUGMENT_SALT for s in seeds], tuple(x.shape[1:]), nets.device).draw()
        sigma = torch.full((len(x),), float(noise_level), device=nets.device)
        conditioning["low_res"] = augment_low_res(x, sigma, noise)
    if nets.noise_level:
        conditioning["low_res_sigma"] = torch.full((len(x),), float(noise_level), device=nets.device)
    return sample_batch(nets, [Cell(parse_sampler(sampler).name, 0.0)] * len(x), seeds, labels, clip_denoised, eta,
                        conditioning)
