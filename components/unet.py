"""The ADM UNet (Dhariwal & Nichol 2021, Sec. 3 "Architecture improvements").

Residual blocks with adaptive group normalisation (AdaGN: GroupNorm(h) * (1 + scale) + shift, scale and shift
projected from the timestep + class embedding), BigGAN residual blocks for up/down-sampling, multi-head attention at
several resolutions, learned sigma (2x output channels) and zero-initialised output layers.

Module names and nesting follow the released implementation exactly (``input_blocks``, ``middle_block``,
``output_blocks``, ``out``), so released state_dicts load with ``strict=True``. The encoder half is built by
:func:`build_encoder` and shared with the noisy classifier (components/classifier.py).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .nn import AttentionBlock, normalization, timestep_embedding, zero_module


class TimestepBlock(nn.Module):
    """A module whose forward takes the embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Strided 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block; with ``use_scale_shift_norm`` the embedding modulates the second norm (AdaGN)."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]  # [B, C', 1, 1]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


@dataclass(frozen=True)
class EncoderSpec:
    """What the encoder builder needs; both UNetConfig and ClassifierConfig provide it."""

    in_channels: int
    model_channels: int
    num_res_blocks: int
    attention_ds: tuple[int, ...]  # downsampling factors (image_size // resolution) that get attention
    channel_mult: tuple[float, ...]
    dropout: float
    num_heads: int
    num_head_channels: int
    use_scale_shift_norm: bool
    resblock_updown: bool
    use_new_attention_order: bool
    conv_resample: bool = True


def _down_block(spec: EncoderSpec, ch: int, emb_dim: int) -> TimestepEmbedSequential:
    if spec.resblock_updown:
        return TimestepEmbedSequential(
            ResBlock(ch, emb_dim, spec.dropout, ch, spec.use_scale_shift_norm, down=True)
        )
    return TimestepEmbedSequential(Downsample(ch, spec.conv_resample, ch))


def _attention(spec: EncoderSpec, ch: int, num_heads: int) -> AttentionBlock:
    return AttentionBlock(ch, num_heads, spec.num_head_channels, spec.use_new_attention_order)


def build_encoder(spec: EncoderSpec, emb_dim: int):
    """Input blocks and middle block. Returns (input_blocks, middle_block, skip channels, final channels, final ds)."""
    ch = int(spec.channel_mult[0] * spec.model_channels)
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(spec.in_channels, ch, 3, padding=1))])
    skip_chans, ds = [ch], 1
    for level, mult in enumerate(spec.channel_mult):
        for _ in range(spec.num_res_blocks):
            out_ch = int(mult * spec.model_channels)
            layers = [ResBlock(ch, emb_dim, spec.dropout, out_ch, spec.use_scale_shift_norm)]
            ch = out_ch
            if ds in spec.attention_ds:
                layers.append(_attention(spec, ch, spec.num_heads))
            input_blocks.append(TimestepEmbedSequential(*layers))
            skip_chans.append(ch)
        if level != len(spec.channel_mult) - 1:
            input_blocks.append(_down_block(spec, ch, emb_dim))
            skip_chans.append(ch)
            ds *= 2
    middle_block = TimestepEmbedSequential(
        ResBlock(ch, emb_dim, spec.dropout, ch, spec.use_scale_shift_norm),
        _attention(spec, ch, spec.num_heads),
        ResBlock(ch, emb_dim, spec.dropout, ch, spec.use_scale_shift_norm),
    )
    return input_blocks, middle_block, skip_chans, ch, ds


def time_embed_mlp(model_channels: int) -> nn.Sequential:
    emb_dim = 4 * model_channels
    return nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


class UNetModel(nn.Module):
    """eps (and, with learned sigma, the variance interpolation v) from (x_t, t, y): model(x_t, t, y=None)."""

    def __init__(self, spec: EncoderSpec, out_channels: int, num_classes: int | None = None,
                 num_heads_upsample: int = -1, null_class: bool = False):
        super().__init__()
        self.model_channels = spec.model_channels
        self.num_classes = num_classes
        # classifier-free guidance (Ho & Salimans 2022): one more label row, the null class num_classes, learnt by
        # label dropout; only then, so the released layouts stay exactly as they are
        self.null_label = num_classes if null_class and num_classes is not None else None
        emb_dim = 4 * spec.model_channels
        self.time_embed = time_embed_mlp(spec.model_channels)
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes + (self.null_label is not None), emb_dim)
        self.input_blocks, self.middle_block, skip_chans, ch, ds = build_encoder(spec, emb_dim)
        heads_up = spec.num_heads if num_heads_upsample == -1 else num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(spec.channel_mult))[::-1]:
            for i in range(spec.num_res_blocks + 1):
                out_ch = int(spec.model_channels * mult)
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, spec.dropout, out_ch, spec.use_scale_shift_norm)]
                ch = out_ch
                if ds in spec.attention_ds:
                    layers.append(_attention(spec, ch, heads_up))
                if level and i == spec.num_res_blocks:
                    if spec.resblock_updown:
                        layers.append(ResBlock(ch, emb_dim, spec.dropout, ch, spec.use_scale_shift_norm, up=True))
                    else:
                        layers.append(Upsample(ch, spec.conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        input_ch = int(spec.channel_mult[0] * spec.model_channels)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.run_blocks(x, self.embedding(timesteps, y))

    def embedding(self, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The timestep (+ class) embedding every residual block is conditioned on."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y exactly when the model is class-conditional (num_classes set)")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if y is not None:
            emb = emb + self.label_emb(y)
        return emb

    def run_blocks(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The network's output for input x under the embedding emb."""
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
