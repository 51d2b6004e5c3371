"""Noisy classifier p(y | x_t, t) used for guidance (Dhariwal & Nichol 2021, Sec. 4 and App. C).

The encoder half of the ADM UNet (the same :func:`build_encoder` as the diffusion model) followed by a pooling head:
"attention" pooling as released (the spatial mean token attends to all positions), or "adaptive" average pooling.
The network sees the same integer timesteps as the diffusion model: classifier(x_t, t) -> logits.
"""

import torch
from torch import nn

from .config.sections import POOLS
from .nn import AttentionPool2d, normalization, timestep_embedding, zero_module
from .unet import EncoderSpec, build_encoder, time_embed_mlp


class EncoderUNetModel(nn.Module):
    def __init__(self, spec: EncoderSpec, image_size: int, num_classes: int, pool: str = "attention"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"classifier pool {pool!r} is not one of {POOLS}")
        self.model_channels = spec.model_channels
        self.time_embed = time_embed_mlp(spec.model_channels)
        self.input_blocks, self.middle_block, _, ch, ds = build_encoder(spec, 4 * spec.model_channels)
        if pool == "attention":
            if spec.num_head_channels == -1:
                raise ValueError("attention pooling needs num_head_channels (e.g. 64)")
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, spec.num_head_channels, num_classes),
            )
        else:
            self.out = nn.Sequential(
                normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, num_classes, 1)), nn.Flatten(),
            )

    def features(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Encoder output before the head: [B, C, H/ds, W/ds]."""
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
        return self.middle_block(h, emb).type(x.dtype)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x, timesteps))  # [B, num_classes]
