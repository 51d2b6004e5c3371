"""ADM-U, the super-resolution UNet of the paper's upsampling stacks (Dhariwal & Nichol 2021; released as
``SuperResModel`` with the 64 -> 256 and 128 -> 512 checkpoints), and its training pairs.

The network is the ADM UNet of unet.py conditioned on a low-resolution image: ``net(x_t, t, low_res=..., y=...)``
upsamples ``low_res`` bilinearly to x_t's size and concatenates it to x_t on channels before the first convolution,
so the UNet takes 2 x in_channels and predicts what a plain UNet predicts (eps, and v with learned sigma) for x_t's
in_channels. Everything else (timestep and class embedding, blocks, module names) is the UNet's, so the released
state_dicts load with ``strict=True`` (checked against shared/checkpoint_formats/*_upsampler.json).

``low_res`` travels like the label, as a keyword of ``model_kwargs``: the diffusion's ``training_losses`` and
``p_mean_variance`` and every sampling loop call ``model(x, t, **model_kwargs)``, so they run an upsampler unchanged
with ``model_kwargs={"low_res": low_res, "y": y}``. Its training pairs are (large, :func:`downsample_area` (large)),
as the released ``super_res_train.py`` makes them: no blur or noise augmentation.
"""

from dataclasses import replace

import torch
import torch.nn.functional as F

from .nn import timestep_embedding
from .unet import EncoderSpec, UNetModel, time_embed_mlp


def downsample_area(large: torch.Tensor, small_size: int) -> torch.Tensor:
    """The low-resolution half of a training pair: [B, C, H, W] clean images in [-1, 1] -> [B, C, small_size,
    small_size], each output pixel the mean of its block of input pixels (area interpolation, as released)."""
    return F.interpolate(large, small_size, mode="area")


def upsample_bilinear(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """low_res brought to the noisy image's size as the released forward does: bilinear with half-pixel centres
    (align_corners=False, torch's default for bilinear, which the released call leaves unset) and no antialiasing."""
    return F.interpolate(low_res, size, mode="bilinear", align_corners=False)


# the noise level of conditioning augmentation (a sigma of pixels in [-1, 1]) enters timestep_embedding scaled by this,
# so the levels used (0 to about 1) span the frequencies the timesteps (0 to 999) do
NOISE_LEVEL_SCALE = 1000.0


def augment_low_res(low_res: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Conditioning augmentation (Ho et al. 2021's cascades; not in the released code): low_res + sigma * noise,
    sigma [B] the per-image level, noise [B, C, h, w] standard Gaussian."""
    return low_res + sigma.to(low_res.dtype).reshape(-1, 1, 1, 1) * noise.to(low_res.dtype)


class SuperResModel(UNetModel):
    """The UNet of `spec` whose input is the noisy image (spec.in_channels channels) and the upsampled low_res
    image, concatenated: its first convolution takes 2 x spec.in_channels, as released. ``out_channels`` counts the
    image's channels (doubled with learned sigma), as for the UNet.

    ``noise_level`` (conditioning augmentation, train_upsampler.low_res_noise > 0) adds one embedding MLP, the
    timestep's shape, of the level of the Gaussian noise on low_res (``low_res_sigma``, [B]); its sum with the
    timestep embedding conditions every block. Without it (the default) the layout is the released one."""

    def __init__(self, spec: EncoderSpec, out_channels: int, num_classes: int | None = None,
                 num_heads_upsample: int = -1, null_class: bool = False, noise_level: bool = False):
        super().__init__(replace(spec, in_channels=2 * spec.in_channels), out_channels, num_classes,
                         num_heads_upsample, null_class=null_class)
        self.noise_level = noise_level
        if noise_level:
            self.noise_level_embed = time_embed_mlp(spec.model_channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, low_res: torch.Tensor | None = None,
                y: torch.Tensor | None = None, low_res_sigma: torch.Tensor | None = None) -> torch.Tensor:
        if low_res is None:
            raise ValueError("a super-resolution model needs low_res, the low-resolution image to upsample: pass "
                             "model_kwargs={'low_res': low_res, ...}")
        emb = self.embedding(timesteps, y)
        if self.noise_level:
            if low_res_sigma is None:
                raise ValueError("this upsampler was trained with conditioning augmentation: pass the level of the "
                                 "noise on low_res as low_res_sigma ([B]; 0 for clean low_res)")
            level = timestep_embedding(low_res_sigma.float() * NOISE_LEVEL_SCALE, self.model_channels)
            emb = emb + self.noise_level_embed(level.to(emb.dtype))
        elif low_res_sigma is not None and bool((low_res_sigma != 0).any()):
            raise ValueError("low_res_sigma > 0 needs an upsampler trained with conditioning augmentation "
                             "(train_upsampler.low_res_noise > 0); this one has no noise-level embedding")
        upsampled = upsample_bilinear(low_res, tuple(x.shape[-2:])).to(x.dtype)
        return self.run_blocks(torch.cat([x, upsampled], dim=1), emb)
