"""Reading ../shared/golden (values computed by openai/guided-diffusion; see its README) for the golden tests."""

import json
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file

from components import classifier_from_flags, model_from_flags, superres_from_flags
from components.config.flags import diffusion_config_from_flags
from components.sampling import SampleNoise

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


@dataclass
class GoldenSuperRes:
    """Item 7: the released SuperResModel's config, the project's network with its weights, and the values."""

    name: str
    flags: dict
    net: torch.nn.Module
    values: dict


def superres_flags(cfg: dict) -> dict:
    """superres_configs.json's SuperResModel kwargs as the released code's sr flags (attention resolutions in pixels,
    not downsampling factors), plus the in_channels and channel_mult flags a small config takes."""
    kw = cfg["superres_kwargs"]
    return dict(large_size=cfg["image_size"], small_size=cfg["small_size"], in_channels=cfg["in_channels"],
                num_channels=kw["model_channels"], num_res_blocks=kw["num_res_blocks"],
                attention_resolutions=",".join(str(cfg["image_size"] // ds) for ds in kw["attention_resolutions"]),
                channel_mult=",".join(str(m) for m in kw["channel_mult"]), num_heads=1,  # UNetModel's default
                num_head_channels=kw["num_head_channels"], use_scale_shift_norm=kw["use_scale_shift_norm"],
                resblock_updown=kw["resblock_updown"], dropout=cfg["dropout"],
                learn_sigma=cfg["out_channels"] == 2 * cfg["in_channels"], class_cond=kw["num_classes"] is not None,
                noise_schedule=cfg["noise_schedule"])


def load_superres(golden: "Golden", name: str = "grey8to32") -> GoldenSuperRes:
    cfg = json.loads((golden.path / "superres_configs.json").read_text())[name]
    flags = superres_flags(cfg)
    net = superres_from_flags(flags, num_classes=cfg["superres_kwargs"]["num_classes"])
    net.load_state_dict(golden.weights(f"superres_{name}"), strict=True)
    return GoldenSuperRes(name, flags, net.eval().requires_grad_(False), golden.npz(f"superres_{name}"))


class ReplayNoise(SampleNoise):
    """x_T, then the released run's per-step draws, in the order the released loops drew them (README)."""

    def __init__(self, x_T: np.ndarray, step_noise: np.ndarray):
        self.shape, self.device = tuple(x_T.shape[1:]), torch.device("cpu")
        self.queue = [t_(x_T)] + [t_(z) for z in step_noise]
        self.n = len(x_T)

    def __len__(self):
        return self.n

    def draw(self) -> torch.Tensor:
        return self.queue.pop(0).clone()


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
