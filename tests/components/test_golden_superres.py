"""ADM-U (item 7 of ../shared/golden) against openai/guided-diffusion's SuperResModel on the same weights: a 4x
upsampler 8 -> 32 px, grey, 10 classes. The forward pass (low_res upsampled bilinearly and concatenated before the
first convolution), the training pairs' area downsample, the hybrid loss, p_mean_variance and a DDIM-5 run, each with
low_res and y in model_kwargs; and the two released upsampler layouts loading with strict=True."""

import json

import numpy as np
import pytest
import torch
from golden import ReplayNoise, assert_close, load_superres, pmv_atol, t_

from components import superres_from_flags
from components.checkpoint import load_into
from components.config.flags import diffusion_config_from_flags
from components.config.presets import RELEASED_FLAGS
from components.diffusion import create_diffusion
from components.losses import training_losses
from components.sampling import ddim_sample
from components.superres import downsample_area

UPSAMPLERS = {"64_256_upsampler": 311_795_910, "128_512_upsampler": 308_835_270}


@pytest.fixture
def sr(golden):
    return load_superres(golden)


def _kwargs(z) -> dict:
    return {"low_res": t_(z["low_res"]), "y": t_(z["y"])}


def _diffusion(sr, respacing: str = ""):
    # README: learned sigma, linear schedule, the hybrid loss with rescale_learned_sigmas (T = 1000: a factor of 1)
    return create_diffusion(diffusion_config_from_flags({**sr.flags, "rescale_learned_sigmas": True}), respacing)


def test_forward_pass(sr):
    z = sr.values
    with torch.no_grad():
        out = sr.net(t_(z["x_t"]), t_(z["t"]), **_kwargs(z))
    ref = z["output"]
    assert_close(out, ref, atol=1e-5 * max(1.0, np.abs(ref).max()), what="superres(x_t, t, low_res, y)")


def test_training_pairs_are_the_area_downsample(sr):
    z = sr.values
    small = sr.flags["small_size"]
    assert_close(downsample_area(t_(z["large"]), small), z["low_res"], atol=1e-7, what="area downsample")


def test_hybrid_loss(sr):
    z = sr.values
    with torch.no_grad():
        terms = training_losses(_diffusion(sr), sr.net, t_(z["large"]), t_(z["t"]), _kwargs(z), noise=t_(z["noise"]))
    for key in ("loss", "mse", "vb"):
        assert_close(terms[key], z[key], atol=0.0, rtol=1e-5, what=f"hybrid {key}")


def test_p_mean_variance(sr):
    z, d = sr.values, _diffusion(sr)
    with torch.no_grad():
        out = d.p_mean_variance(sr.net, t_(z["x_t"]), t_(z["t"]), clip_denoised=True, model_kwargs=_kwargs(z))
    atol = pmv_atol(d, z["t"], 4)
    for key in ("mean", "log_variance", "pred_xstart"):
        assert_close(out[key], z[f"pmv_{key}"], atol=atol[key], rtol=1e-5, what=f"p_mean_variance {key}")


def test_ddim5_trajectory(sr):
    """eta 0: the per-step draws are multiplied by sigma = 0, so zeros stand in for the released run's (not
    stored); x_T is replayed, and the loop must draw exactly 1 + 5 times, as the released one does."""
    z, d = sr.values, _diffusion(sr, "ddim5")
    noise = ReplayNoise(z["x_T"], np.zeros((d.num_timesteps, *z["x_T"].shape), dtype=np.float32))
    x_0 = ddim_sample(sr.net, d, noise, _kwargs(z), clip_denoised=True, eta=0.0)
    assert not noise.queue, "the loop drew a different number of noise tensors than the released one"
    assert_close(x_0, z["ddim5_eta0"], atol=1e-4, what="DDIM-5 x_0 conditioned on low_res and y")


@pytest.mark.parametrize("name", UPSAMPLERS)
def test_released_upsamplers_load_strictly(checkpoint_formats, name):
    manifest = json.loads((checkpoint_formats / f"{name}.json").read_text())
    with torch.device("meta"):
        net = superres_from_flags(RELEASED_FLAGS[name])
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest["state_dict"].items()}
    load_into(net, state, source=manifest["file"])  # strict=True after naming any difference
    assert [list(v.shape) for v in net.state_dict().values()] == list(manifest["state_dict"].values())
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"] == UPSAMPLERS[name]
    assert net.input_blocks[0][0].in_channels == 6 and net.out[-1].out_channels == 6  # image + low_res; eps + v
