"""Reading ../shared/golden (values computed by openai/guided-diffusion; see its README) for the golden tests."""

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file

from components import classifier_from_flags, model_from_flags
from components.config.flags import diffusion_config_from_flags

GOLDEN_NETS = ("grey16", "rgb32")


@dataclass
class GoldenNet:
    name: str
    flags: dict
    unet: torch.nn.Module
    classifier: torch.nn.Module

    def diffusion_config(self, noise_schedule: str = "linear"):
        """The released code's create_gaussian_diffusion(learn_sigma=True, noise_schedule=...) as our config."""
        return diffusion_config_from_flags({**self.flags, "noise_schedule": noise_schedule})


class Golden:
    def __init__(self, path):
        self.path = path
        self.configs = json.loads((path / "configs.json").read_text())
        self._npz, self._nets = {}, {}

    def npz(self, name: str) -> dict:
        if name not in self._npz:
            with np.load(self.path / f"{name}.npz", allow_pickle=False) as z:
                self._npz[name] = {k: z[k] for k in z.files}
        return self._npz[name]

    def weights(self, name: str) -> dict:
        # stored in bf16 / fp8 for size; their float32 upcast is exactly what the released code computed with
        return {k: v.float() for k, v in load_file(self.path / f"{name}.safetensors").items()}

    def net(self, name: str) -> GoldenNet:
        if name not in self._nets:
            self._nets[name] = self._build(name)
        return self._nets[name]

    def _build(self, name: str) -> GoldenNet:
        cfg = self.configs[name]
        flags = cfg["flags"]
        unet = model_from_flags(flags, **cfg["project_api"]["model_from_flags"])
        classifier = classifier_from_flags(flags, **cfg["project_api"]["classifier_from_flags"])
        unet.load_state_dict(self.weights(f"{name}_unet"), strict=True)
        classifier.load_state_dict(self.weights(f"{name}_classifier"), strict=True)
        for net in (unet, classifier):
            net.eval().requires_grad_(False)
        return GoldenNet(name, flags, unet, classifier)


def t_(array) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def assert_close(got: torch.Tensor, expected, atol: float, rtol: float = 0.0, what: str = ""):
    """|got - expected| <= atol + rtol * |expected|, elementwise, with the worst offender in the message."""
    expected = t_(expected).to(got.dtype) if not isinstance(expected, torch.Tensor) else expected
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got.detach() - expected).abs()
    bound = atol + rtol * expected.abs()
    worst = (err - bound).flatten().argmax()
    assert bool((err <= bound).all()), (
        f"{what}: max |diff| {err.max().item():.3g} (bound {bound.flatten()[worst].item():.3g} at flat index "
        f"{worst.item()}: got {got.flatten()[worst].item():.6g}, expected {expected.flatten()[worst].item():.6g})")


def per_example(values: np.ndarray, ndim: int) -> torch.Tensor:
    return torch.from_numpy(values).float().reshape(-1, *([1] * (ndim - 1)))


def pmv_atol(d, t: np.ndarray, ndim: int) -> dict:
    """Absolute tolerances per example. An eps error of e moves pred_xstart by sqrt(1/abar - 1) e and the mean by
    coef1 sqrt(1/abar - 1) e (31.6 e at cosine t=999), so those bounds grow with the factors (README: 1e-5 x)."""
    eps_gain = d.sqrt_recipm1_alphas_cumprod[t]
    return {"variance": per_example(np.full(len(t), 1e-5), ndim),
            "log_variance": per_example(np.full(len(t), 1e-5), ndim),
            "mean": per_example(1e-5 * np.maximum(1.0, d.posterior_mean_coef1[t] * eps_gain), ndim),
            "pred_xstart": per_example(1e-5 * np.sqrt(1.0 / d.alphas_cumprod[t]), ndim)}


def assert_pmv(out: dict, ref: dict, prefix: str, d, t: np.ndarray, what: str):
    for key, atol in pmv_atol(d, t, out["mean"].ndim).items():
        assert_close(out[key], ref[f"{prefix}.{key}"], atol=atol, rtol=1e-5, what=f"{what} {key}")
