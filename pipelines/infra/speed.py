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
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from components.precision import COMPILE_ESTIMATE_S, Choice, SpeedSettings, device_description, reuse_choice
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
    """The cached choice under `key`; None when there is none or the record is not one this code wrote (a cache is
    never an error: the choice is measured again)."""
    path = cache_root() / f"{key}.json"
    try:
        choice = Choice.from_dict(json.loads(path.read_text())["choice"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    s = choice.settings
    sound = (s.precision in ("fp32", "bf16") and all(isinstance(v, bool) for v in (s.channels_last, s.compile,
                                                                                    s.cuda_graphs))
             and all(isinstance(v, (int, float)) and v >= 0 for v in choice.timings.values())
             and (choice.compile_seconds is None or isinstance(choice.compile_seconds, (int, float))))
    return choice if sound else None


def store(key: str, choice: Choice, context: dict) -> None:
    """The choice under `key`, written atomically and readable by all (a cache may be shared by the users of a
    machine); a cache folder that cannot be written costs a measurement next time, never the run."""
    root = cache_root()
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=root, suffix=".tmp", delete=False) as f:
            tmp = f.name
            json.dump({"choice": choice.as_dict(), "context": context}, f, indent=1, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, root / f"{key}.json")
    except OSError as e:
        warnings.warn(f"speed choice not cached in {root} ({e}); it will be measured again", stacklevel=2)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def recorded(tracker: Tracker | None, run_id: str, cuda_graphs: bool = False) -> Choice | None:
    """The settings an earlier part of this training run recorded on it (`record`), None when none: a restarted
    worker group or a resumed run goes on in them."""
    if tracker is None:
        return None
    params = tracker.run(run_id).data.params
    if "speed.precision" not in params:
        return None
    settings = SpeedSettings(params["speed.precision"], params.get("speed.channels_last") == "True",
                             params.get("speed.compile") == "True", cuda_graphs)
    return Choice(settings, "run", note="recorded on this training run by its first part")


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
