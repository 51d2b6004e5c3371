"""Mixed precision and speed policy: bf16 autocast where the hardware runs it natively (float32 master weights
elsewhere), channels_last and torch.compile where they pay."""

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


def wanted(setting: str, device: torch.device | str) -> bool:
    """A speed setting ("auto" | "on" | "off") for this device: auto means on for CUDA, where channels_last and
    torch.compile were measured to pay (bench/RESULTS.md), and off on CPUs."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"speed setting {setting!r} must be auto, on or off")
    return setting == "on" or (setting == "auto" and torch.device(device).type == "cuda")


def training_speed(device: torch.device | str, channels_last: str, compile: str) -> tuple[str, str]:
    """("on" | "off", "on" | "off"): what a trainer's channels_last and compile settings mean on this device. auto:
    on for CUDA, off on CPUs, where neither paid in the measured training steps once GroupNorm and attention take
    their fast CPU kernels (bench/RESULTS.md, "Training step against the released code")."""
    return tuple("on" if wanted(s, device) else "off" for s in (channels_last, compile))


def speed_up(net: torch.nn.Module, device, channels_last: str = "auto", compile: str = "auto",
             cuda_graphs: str = "off"):
    """The callable to use in hot loops. channels_last converts `net`'s parameters in place (convolutions then run
    NHWC); compile returns a torch.compile wrapper, replaying its kernels as CUDA graphs where `cuda_graphs` is
    wanted on a CUDA device (the training step is launch-bound without them: bench/RESULTS.md). `net` itself stays
    the module whose state_dict is saved, so checkpoint keys never carry the wrapper's prefix."""
    if wanted(channels_last, device):
        net.to(memory_format=torch.channels_last)
    if not wanted(compile, device):
        return net
    return torch.compile(net, mode="reduce-overhead" if graphed(device, compile, cuda_graphs) else None)


def graphed(device, compile: str, cuda_graphs: str) -> bool:
    """Whether speed_up with these settings replays CUDA graphs: compiled, on CUDA, with cuda_graphs wanted."""
    return torch.device(device).type == "cuda" and wanted(compile, device) and wanted(cuda_graphs, device)
