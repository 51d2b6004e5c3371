"""Building blocks of the ADM UNet (Dhariwal & Nichol 2021, Sec. 3; Nichol & Dhariwal 2021, App. A).

Sinusoidal timestep embedding, GroupNorm computed in float32, zero-initialised layers, and multi-head
self-attention over flattened spatial positions in both channel orders of the released checkpoints:

* "legacy" order (``use_new_attention_order=False``): the qkv projection is laid out per head as
  [q_h, k_h, v_h] for h in heads;
* "new" order (``use_new_attention_order=True``): the projection is laid out as [q, k, v], each split into heads.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; the explicit einsum form is kept
only as the fp32 baseline that benchmarks compare against.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """[N] timesteps -> [N, dim] embedding: cos of the first half of the frequencies, sin of the second."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 and returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            if x.device.type == "cpu" and x.dtype == torch.bfloat16:
                # the CPU kernel takes bf16 input with float32 weights and computes in float32 itself: the same
                # numbers as the round trip through float32, without two full-size casts; in NCHW, since its
                # channels_last kernels are far slower than the copy (bench/RESULTS.md)
                return F.group_norm(x.contiguous(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.type(x.dtype)


def normalization(channels: int) -> nn.Module:
    return GroupNorm32(GROUPS, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# Attention backend: "sdpa" (default, fused kernels) or "einsum" (the released code's explicit form, used as a
# benchmark baseline). Both compute the same function.
ATTENTION_BACKENDS = ("sdpa", "einsum")


def attention_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """q, k, v: [B, heads, T, ch] -> [B, heads, T, ch], softmax(q k^T / sqrt(ch)) v."""
    if backend == "sdpa" and q.device.type == "cpu" and q.dtype != torch.float32:
        # on CPUs SDPA's float32 kernels beat its bf16 ones, the backward most (bench/RESULTS.md)
        with torch.autocast(device_type="cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).type(q.dtype)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend != "einsum":
        raise ValueError(f"attention backend {backend!r} is not one of {ATTENTION_BACKENDS}")
    scale = 1 / math.sqrt(math.sqrt(q.shape[-1]))
    weight = torch.einsum("bhtc,bhsc->bhts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bhts,bhsc->bhtc", weight, v)


class QKVAttention(nn.Module):
    """Multi-head attention on a packed qkv tensor [B, 3 * heads * ch, T] -> [B, heads * ch, T]."""

    def __init__(self, num_heads: int, new_order: bool, backend: str = "sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.new_order = new_order
        self.backend = backend

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.num_heads)
        if self.new_order:
            # [B, 3, heads, ch, T]: q, k and v each hold all heads
            q, k, v = qkv.reshape(bs, 3, self.num_heads, ch, length).unbind(1)
        else:
            # [B, heads, 3, ch, T]: each head holds its own q, k, v
            q, k, v = qkv.reshape(bs, self.num_heads, 3, ch, length).unbind(2)
        # [B, heads, T, ch], contiguous: SDPA's fused CPU kernel falls back to the slow math path on strided inputs
        q, k, v = (z.transpose(-1, -2).contiguous() for z in (q, k, v))
        a = attention_heads(q, k, v, self.backend)
        return a.transpose(-1, -2).reshape(bs, self.num_heads * ch, length)


def resolve_num_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Heads as the released code chooses them: fixed channels per head when given, else a fixed head count."""
    if num_head_channels == -1:
        return num_heads
    if channels % num_head_channels:
        raise ValueError(
            f"attention channels {channels} are not divisible by num_head_channels={num_head_channels}; "
            "choose a num_head_channels that divides every attention level's width"
        )
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Residual self-attention over all spatial positions: x + proj_out(attention(qkv(norm(x))))."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1, new_order: bool = False):
        super().__init__()
        self.channels = channels
        self.num_heads = resolve_num_heads(channels, num_heads, num_head_channels)
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads, new_order)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)  # [B, C, H*W]
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class AttentionPool2d(nn.Module):
    """Attention pooling of the classifier head (CLIP style): the mean token attends to all positions."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = resolve_num_heads(embed_dim, 1, num_head_channels)
        self.attention = QKVAttention(self.num_heads, new_order=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *_ = x.shape
        x = x.reshape(b, c, -1)  # [B, C, H*W]
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # [B, C, H*W + 1]
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]  # [B, output_dim]


def set_attention_backend(module: nn.Module, backend: str) -> nn.Module:
    """Switch every attention layer of a network to `backend` ("sdpa" or "einsum")."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {ATTENTION_BACKENDS}")
    for m in module.modules():
        if isinstance(m, QKVAttention):
            m.backend = backend
    return module
