"""Checkpoints: safe save/load, exponential moving averages, and the released ADM ``.pt`` files.

Weights are written as safetensors through a temporary name and renamed into place, with the resolved config as JSON
beside them. Released ``.pt`` files are read with ``torch.load(weights_only=True)``, which never unpickles code.
"""

import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import UserError
from .config.presets import RELEASED_FLAGS
from .networks import from_released_flags


class CheckpointError(UserError):
    """A checkpoint does not fit the network it is loaded into; the message lists what differs."""


def update_ema(ema_params, params, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * params, in place."""
    with torch.no_grad():  # foreach: a few kernels for all parameters instead of two per parameter
        ema_params = list(ema_params)
        torch._foreach_mul_(ema_params, rate)
        torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - rate)


def ema_init_share(rate: float, steps: int) -> float:
    """Weight of the initial (random) parameters in the EMA after `steps` updates: the EMA starts from them, as
    released, so short runs at a slow rate sample from partly untrained weights (0.995 over 450 steps: 10%)."""
    return rate ** steps


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(state_dict: dict, path: str | Path, config: dict | None = None) -> None:
    """Write a state_dict as safetensors (and `config` as JSON next to it, same stem + .json), atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp))
    if config is not None:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        _atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))


def _refused(path: Path, error: Exception) -> "CheckpointError":
    """Our message for a weights file torch.load(weights_only=True) refuses. torch's own message suggests
    weights_only=False, which would run whatever code the file holds: never repeat it."""
    return CheckpointError(f"weights file {path} is not a plain state dict of tensors: it holds Python objects "
                           f"besides tensors, or is no PyTorch file ({type(error).__name__}); adm never runs code "
                           "from a weights file, so export the weights from a source you trust as safetensors or with "
                           "torch.save(model.state_dict(), path)")


def _torch_load(path: Path, map_location: str) -> dict:
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: our error below says what matters
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True,
                               mmap=map_location == "meta" and zipfile.is_zipfile(path))
    except Exception as e:  # UnpicklingError for objects and for random bytes, RuntimeError for a broken zip, ...
        raise _refused(path, e) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} is not a plain state dict of tensors (it holds a "
                              f"{type(state).__name__}); save model.state_dict() instead")
    return state


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path or URI")


def load_state_dict(path: str | Path) -> dict:
    """Read weights from .safetensors, or from a .pt/.pth file without unpickling code (weights_only=True)."""
    path = Path(path)
    _check_exists(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({e})") from None
    return _torch_load(path, "cpu")


def read_shapes(path: str | Path) -> dict:
    """The file's state dict as meta tensors (names and shapes, no data read): what the driver checks a weights file
    with before any worker loads it."""
    path = Path(path)
    _check_exists(path)
    if path.suffix != ".safetensors":
        return _torch_load(path, "meta")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"weights file {path} is not a readable safetensors file ({e})") from None


def describe_mismatch(model: nn.Module, state: dict) -> str:
    """Missing and unexpected keys, and shape differences, between a network and a state_dict."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            parts.append(f"{title} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
    return "; ".join(parts)


def matching_released_flags(state: dict) -> list[str]:
    """Names of released flag sets (presets.RELEASED_FLAGS) whose network has exactly this state_dict layout."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = []
    for name, flags in RELEASED_FLAGS.items():  # diffusion UNets, upsamplers and classifiers
        with torch.device("meta"):
            net = from_released_flags(name, flags)
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes:
            found.append(name)
    return found


def check_fits(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """CheckpointError naming the differences (and the released flags the weights match) unless `state` has exactly
    the keys and shapes of `model`; both may be on the meta device."""
    mismatch = describe_mismatch(model, state)
    if mismatch:
        matches = matching_released_flags(state)
        hint = (f"the checkpoint matches the released flags of {', '.join(matches)} "
                "(components.config.presets.RELEASED_FLAGS)"
                if matches else "no released flag set matches it; check num_channels, num_res_blocks and class_cond")
        raise CheckpointError(f"{source} does not fit the network: {mismatch}. {_null_class_hint(model, state)}{hint}")


def _null_class_hint(model: nn.Module, state: dict) -> str:
    """Why the label embeddings differ by one row: the null class of classifier-free guidance on one side only."""
    ours, theirs = model.state_dict().get("label_emb.weight"), state.get("label_emb.weight")
    if ours is None or theirs is None or abs(ours.shape[0] - theirs.shape[0]) != 1:
        return ""
    if ours.shape[0] > theirs.shape[0]:
        return ("The network has the null-class label row of classifier-free guidance (train_diffusion.label_dropout "
                "> 0) but the weights were trained without label dropout (a released checkpoint, for one): set "
                "train_diffusion.label_dropout=0 to load them, and guide them with the classifier. ")
    return ("The weights have the null-class label row of classifier-free guidance (trained with label dropout) but "
            "the config has train_diffusion.label_dropout=0: set it as it was in training (e.g. 0.1). ")


def load_into(model: nn.Module, path_or_state, source: str = "checkpoint") -> nn.Module:
    """Load weights strictly; on any mismatch raise CheckpointError naming the differences and matching flags."""
    state = load_state_dict(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    check_fits(model, state, source)
    model.load_state_dict(state, strict=True)
    return model
