"""The measured speed choice of trainers and actors (components/precision.py), cached and recorded.

A choice is cached per (device description, torch version, what runs: training of a kind / guided sampling /
features, the network configs, the batch, the settings asked for) in ``$ADM_CACHE_DIR/speed/<digest>.json`` (default
~/.cache/adm-pipeline/speed), so only the first trainer or sampling job of a network on a machine kind pays for the
trial steps; later ones start at once. The torch threads are not part of the key: the actors of one job, and jobs
with other actor counts, must all take the same choice (the samples do not depend on the number of actors).
Sampling leaves the batch out of the key as well: a sample depends only on its seed, label, cell and checkpoints,
whatever the job's batch size. Delete the folder to measure again. Each choice is recorded on its MLflow run:
params ``speed.<field>`` and the timings behind it as ``speed/<what>.json``.
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from components.precision import COMPILE_ESTIMATE_S, Choice, device_description, reuse_choice
from pipelines.infra.storage import cache_home
from pipelines.infra.tracking import Tracker


def cache_root() -> Path:
    return cache_home() / "speed"


def cache_key(device: str, what: str, networks: dict, batch: int | None, asked: dict) -> str:
    """The digest a choice is cached under: it changes with the device description, torch's version, what runs,
    the networks' configs, the batch (None for sampling: samples must not depend on the job's batch size either)
    and the settings asked for (a setting forced on or off narrows the choice)."""
    payload = {"device": device, "torch": torch.__version__, "what": what, "networks": networks, "batch": batch,
               "asked": asked}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def load_cached(key: str) -> Choice | None:
    path = cache_root() / f"{key}.json"
    try:
        return Choice.from_dict(json.loads(path.read_text())["choice"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, or unreadable (a cache is never an error): measured again


def store(key: str, choice: Choice, context: dict) -> None:
    """The choice under `key`, written atomically (trainers starting together write different keys; a second
    writer of the same key writes the same kind of record)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=root, suffix=".tmp", delete=False) as f:
        json.dump({"choice": choice.as_dict(), "context": context}, f, indent=1, default=str)
    os.replace(f.name, root / f"{key}.json")


def cached_choice(device: torch.device | str, what: str, networks: dict, batch: int | None, asked: dict,
                  measure: Callable[[], Choice], compile_again: Callable[[Choice], Choice] | None = None,
                  run_steps: int = 0) -> Choice:
    """The choice for this device and work: from the cache when there is one (with torch.compile decided again for
    this run's length, timing compile only when the cached record never did and this run could repay it), else
    measured by `measure()` and cached."""
    description = device_description(device)
    key = cache_key(description, what, networks, batch, asked)
    context = {"device": description, "torch": torch.__version__, "what": what, "networks": networks,
               "batch": batch, "asked": asked, "threads": torch.get_num_threads()}
    hit = load_cached(key)
    if hit is not None:
        reused = reuse_choice(hit, asked.get("compile", "off"), run_steps, COMPILE_ESTIMATE_S)
        if reused is not None:
            return reused
        if compile_again is not None:
            choice = compile_again(hit)
            store(key, choice, context)
            choice.source = "measured"
            return choice
    choice = measure()
    if choice.source == "measured":
        store(key, choice, context)
    return choice


def record(tracker: Tracker, run_id: str, what: str, choice: Choice, prefix: str = "speed") -> None:
    """The choice on an MLflow run: its settings as params, the timings behind them as an artifact."""
    s = choice.settings
    tracker.log_params(run_id, {f"{prefix}.precision": s.precision, f"{prefix}.channels_last": s.channels_last,
                                f"{prefix}.compile": s.compile, f"{prefix}.source": choice.source})
    tracker.log_dict(run_id, choice.as_dict(), f"speed/{what}.json")
