"""The FID Inception network as a plain PyTorch module, built from the tensors of the pinned TorchScript archive.

Why not run the archive itself: its blocks make every branch ``contiguous()`` before concatenating (so a channels_last
activation is converted back and forth at every block) and run batch norm and ReLU as separate passes after each of
its 94 convolutions. Here each convolution carries its batch norm folded into its weights and bias (inference only:
y = (conv(x, w) - mean) / sqrt(var + eps) + beta = conv(x, w / s) + (beta - mean / s), s = sqrt(var + eps)), activations
stay in one memory format, and the whole network can be cast to bfloat16. The graph is the archive's: the same
convolutions, paddings and strides, average pools that leave the padding out of the count, max pools, and the same
branch order in every concatenation (tests/components/test_golden_inception.py compares the result with the
released evaluator's features).
"""

import torch
import torch.nn.functional as F
from torch import nn

BATCH_NORM_EPS = 1e-3  # the archive's batch_norm eps


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


class FoldedConv(nn.Module):
    """Convolution + batch norm (no scale) + ReLU of one archive ``Conv2dLayer``, the batch norm folded in."""

    def __init__(self, layer):
        super().__init__()
        scale = torch.rsqrt(layer.var.double() + BATCH_NORM_EPS)
        self.weight = nn.Parameter((layer.weight.double() * scale[:, None, None, None]).float(), requires_grad=False)
        self.bias = nn.Parameter((layer.beta.double() - layer.mean.double() * scale).float(), requires_grad=False)
        self.stride, self.padding = _pair(layer.stride), _pair(layer.padding)

    def forward(self, x):
        return F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding), inplace=True)


def _avg_pool(x):  # 3x3, stride 1, the zero padding left out of each average (count_include_pad=False)
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def _max_pool_same(x):  # the last block's 3x3 stride-1 max pool
    return F.max_pool2d(x, 3, 1, 1)


def _max_pool_down(x):  # 3x3 stride-2 max pool, no padding
    return F.max_pool2d(x, 3, 2)


def _pool3(x):
    return F.avg_pool2d(x, 8, 8)


def _convs(sequential) -> nn.Sequential:
    return nn.Sequential(*(FoldedConv(layer) for _, layer in sequential.named_children()))


class Branches(nn.Module):
    """Inception blocks A-D: parallel branches, each an optional leading pool then convolutions, concatenated."""

    def __init__(self, branches: list[tuple]):
        super().__init__()
        self.pools = [pool for pool, _ in branches]
        self.convs = nn.ModuleList(convs for _, convs in branches)

    def branches(self, x) -> list:
        return [convs(pool(x) if pool else x) for pool, convs in zip(self.pools, self.convs)]

    def forward(self, x):
        return torch.cat(self.branches(x), 1)


class SplitBranches(nn.Module):
    """Inception block E: two of its branches end in a 1x3 and a 3x1 convolution applied side by side."""

    def __init__(self, block, pool):
        super().__init__()
        self.conv = FoldedConv(block.conv)
        self.tower = FoldedConv(block.tower_conv)
        self.tower_split = nn.ModuleList([FoldedConv(block.tower_mixed_conv), FoldedConv(block.tower_mixed_conv_1)])
        self.tower_1 = nn.Sequential(FoldedConv(block.tower_1_conv), FoldedConv(block.tower_1_conv_1))
        self.tower_1_split = nn.ModuleList([FoldedConv(block.tower_1_mixed_conv),
                                            FoldedConv(block.tower_1_mixed_conv_1)])
        self.pool, self.tower_2 = pool, FoldedConv(block.tower_2_conv)

    def forward(self, x):
        a, b = self.tower(x), self.tower_1(x)
        return torch.cat([self.conv(x), *(c(a) for c in self.tower_split), *(c(b) for c in self.tower_1_split),
                          self.tower_2(self.pool(x))], 1)


def _block(name: str, block) -> nn.Module:
    kind = block.original_name
    if kind == "InceptionA" or kind == "InceptionC":
        return Branches([(None, nn.Sequential(FoldedConv(block.conv))), (None, _convs(block.tower)),
                         (None, _convs(block.tower_1)), (_avg_pool, nn.Sequential(FoldedConv(block.tower_2.conv)))])
    if kind == "InceptionB":
        return Branches([(None, nn.Sequential(FoldedConv(block.conv))), (None, _convs(block.tower)),
                         (_max_pool_down, nn.Sequential())])
    if kind == "InceptionD":
        return Branches([(None, _convs(block.tower)), (None, _convs(block.tower_1)), (_max_pool_down, nn.Sequential())])
    if kind == "InceptionE":
        return SplitBranches(block, _max_pool_same if block.tower_2_pool.original_name == "MaxPool2d" else _avg_pool)
    raise ValueError(f"Inception archive: unexpected block {name} of type {kind}")


class FIDInception(nn.Module):
    """[N, 3, 299, 299] (already scaled to [-1, 1]) -> pool3 [N, 2048, 1, 1]; ``spatial_from`` names the block whose
    first convolution's output the sFID features are read from (``mixed_6``)."""

    def __init__(self, archive: torch.jit.ScriptModule, spatial_from: str = "mixed_6"):
        super().__init__()
        layers = archive.net.layers
        self.names, stages = [], []
        for name, layer in layers.named_children():
            kind = layer.original_name
            if kind == "Conv2dLayer":
                stages.append(FoldedConv(layer))
            elif kind == "MaxPool2d":
                stages.append(_Fn(_max_pool_down))
            elif kind == "AvgPool2d":  # pool3: the average over the last 8x8 map
                stages.append(_Fn(_pool3))
            else:
                stages.append(_block(name, layer))
            self.names.append(name)
        self.stages = nn.ModuleList(stages)
        self.spatial_index = self.names.index(spatial_from)
        self.body_dtype = torch.float32

    def reduce_precision(self, dtype: torch.dtype) -> "FIDInception":
        """Run every stage after the first convolution in ``dtype`` (bfloat16). The first convolution stays float32:
        its input is the resized image, and rounding that to 8 significant bits (about a grey level) moved FID by 1%
        and sFID by 2% on its own (bench/RESULTS.md), where the convolution is 2% of the network's time."""
        self.stages[1:].to(dtype)
        self.body_dtype = dtype
        return self

    def forward(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (pool3 [N, 2048], the spatial block's first-convolution output [N, C, 17, 17])."""
        spatial = None
        for i, stage in enumerate(self.stages):
            if i == self.spatial_index:  # the block's first branch (its 1x1 convolution) is the sFID feature map
                outs = stage.branches(x)
                spatial, x = outs[0], torch.cat(outs, 1)
            else:
                x = stage(x)
            if i == 0:
                x = x.to(self.body_dtype)
        return x.flatten(1), spatial


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)
