"""Mixed precision policy: bf16 autocast where the hardware runs it natively, float32 master weights elsewhere."""

import contextlib

import torch


def autocast_context(device: torch.device | str, enabled: bool = True):
    """bf16 autocast where the hardware runs it fast (CUDA with bf16, CPUs with native bf16); else a no-op."""
    device = torch.device(device)
    if enabled and bf16_supported(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False
