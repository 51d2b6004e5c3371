"""Speed policy: arithmetic (float32, or bf16 autocast over float32 master weights), memory format (channels_last) and
torch.compile, chosen by measurement.

Which is fastest depends on the machine, not on a rule (bench/RESULTS.md, "Speed by measurement"): bf16 autocast is
about twice fp32 on CPUs with AMX and on some with AVX512-BF16 alone, and costs 31% on an Intel Xeon that exposes
AVX512-BF16 without AMX; channels_last pays on GPUs and loses with GroupNorm's bf16 CPU kernels; torch.compile pays
only in runs long enough to repay its compile time. So `auto` means: time a few steps of every candidate, interleaved
(ABAB...), and take the fastest. This module is that choice as pure functions over candidate step callables, with an
injectable timer; the cache (per device, network and batch) and its record on the MLflow run are
pipelines/infra/speed.py's, the trial steps those of the trainers (components/training.py) and the actors.
"""

import contextlib
import dataclasses
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .config.sections import PRECISIONS, SPEED_SETTINGS

# CPU flags that decide which arithmetic is fast; part of the device description, hence of the cache key
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_fp16")
# compile time assumed before one was measured for a network on a device: on the 2-core CPU VMs a torch.compile of
# bench_vs_released.py's training step took 115 s, of a guided DDIM batch 137 s (2026-12-08), a cold one 141 s
# earlier (bench/RESULTS.md); a run whose steps cannot repay this even at a 30% faster step does not try compiling
COMPILE_ESTIMATE_S = 120.0


@dataclass(frozen=True)
class SpeedSettings:
    """What a trainer or actor runs with: arithmetic, memory format, compile (and CUDA graphs with compile)."""

    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False  # compiled with mode="reduce-overhead" (CUDA only)

    @property
    def name(self) -> str:
        parts = [self.precision, "channels_last" if self.channels_last else "nchw"]
        if self.compile:
            parts.append("compiled+cuda_graphs" if self.cuda_graphs else "compiled")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "SpeedSettings":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


@dataclass
class Choice:
    """The settings taken and why: seconds per step of every candidate measured (the fastest of its rounds), the compile
    cost when compile was tried, and where the choice came from: measured, cached, or set (nothing to choose)."""

    settings: SpeedSettings
    source: str = "set"
    timings: dict = field(default_factory=dict)  # candidate name -> seconds per step
    compile_seconds: float | None = None
    note: str = ""

    def as_dict(self) -> dict:
        return {"settings": self.settings.as_dict(), "source": self.source, "timings": dict(self.timings),
                "compile_seconds": self.compile_seconds, "note": self.note}

    @classmethod
    def from_dict(cls, values: dict) -> "Choice":
        return cls(SpeedSettings.from_dict(values["settings"]), values.get("source", "cached"),
                   dict(values.get("timings", {})), values.get("compile_seconds"), values.get("note", ""))

    def summary(self) -> str:
        """One line: the settings, and the timings behind them."""
        measured = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in sorted(
            self.timings.items(), key=lambda kv: kv[1]))
        extra = f" (per step: {measured})" if measured else ""
        compiled = f", compile {self.compile_seconds:.0f} s" if self.compile_seconds is not None else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.settings.name} [{self.source}]{extra}{compiled}{note}"


# --- arithmetic --------------------------------------------------------------------------------------------------
def autocast_context(device: torch.device | str, precision: str = "fp32"):
    """bf16 autocast for precision "bf16" (float32 weights and master copies, bf16 matmuls and convolutions);
    a no-op for "fp32"."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r} must be fp32 or bf16 (auto is resolved by measurement first)")
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 is a candidate at all here: CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (without
    them bf16 is emulated and ~100x slower: not worth a trial step)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def device_description(device: torch.device | str) -> str:
    """What the speed of a setting depends on besides the network: the GPU's name and compute capability, or the
    CPU's model, family and model number and its arithmetic flags, and whether oneDNN offers bf16."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda {torch.cuda.get_device_name(index)} sm{major}{minor}"
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    model = info.get("model name") or platform.processor() or platform.machine()
    return (f"cpu {model} family {info.get('cpu family', '?')} model {info.get('model', '?')} flags "
            f"{','.join(f for f in CPU_FLAGS if f in flags) or 'none'} onednn_bf16 {bf16_supported(device)}")


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    if not os.path.exists("/proc/cpuinfo"):
        return {}
    out = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


# --- candidates --------------------------------------------------------------------------------------------------
def candidates(device: torch.device | str, precision: str = "auto", channels_last: str = "auto"
               ) -> list[SpeedSettings]:
    """The eager settings a choice times, the plain float32 NCHW path first (it is kept unless another is faster by
    more than the margin of `choose`). auto precision tries bf16 only where bf16_supported; auto channels_last both
    layouts."""
    if precision not in PRECISIONS or channels_last not in SPEED_SETTINGS:
        raise ValueError(f"precision {precision!r} / channels_last {channels_last!r}: not a speed setting")
    precisions = {"auto": ("fp32", "bf16") if bf16_supported(device) else ("fp32",)}.get(precision, (precision,))
    layouts = {"auto": (False, True), "on": (True,), "off": (False,)}[channels_last]
    return [SpeedSettings(p, cl) for p in precisions for cl in layouts]


def configured(device: torch.device | str, precision: str = "auto", channels_last: str = "auto",
               compile: str = "auto", cuda_graphs: str = "off") -> SpeedSettings:
    """The settings without a measurement: on / off / fp32 / bf16 as given, auto as the plain path (float32, NCHW,
    eager). What components-level callers (tests, benchmarks) get; the product's trainers and actors measure."""
    first = candidates(device, "fp32" if precision == "auto" else precision,
                       "off" if channels_last == "auto" else channels_last)[0]
    compiled = compile == "on"
    graphs = compiled and torch.device(device).type == "cuda" and cuda_graphs in ("auto", "on")
    return dataclasses.replace(first, compile=compiled, cuda_graphs=graphs)


def wanted(setting: str, device: torch.device | str) -> bool:
    """An on/off setting without a measurement: on only when set on."""
    if setting not in SPEED_SETTINGS:
        raise ValueError(f"speed setting {setting!r} must be auto, on or off")
    return setting == "on"


# --- the measurement ---------------------------------------------------------------------------------------------
def now() -> float:
    """The clock of the measurements when none is passed (tests replace it: no test depends on timing)."""
    return time.perf_counter()


def sync_for(device: torch.device | str) -> Callable[[], None]:
    """What makes a timing wait for the device's queued work: CUDA synchronize, nothing on CPUs."""
    device = torch.device(device)
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def kept_rng(device: torch.device | str):
    """A context that gives the global RNG streams (CPU, and the CUDA device) back as they were: trial steps draw
    from them, the training or sampling after the choice must not see that."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


def time_candidates(trial: Callable[[SpeedSettings], Callable[[], object]], cands: Sequence[SpeedSettings],
                    rounds: int = 3, steps: int = 1, warmup: int = 1, drop_above: float = 3.0,
                    timer: Callable[[], float] | None = None, sync: Callable[[], None] = lambda: None
                    ) -> dict[SpeedSettings, list[float]]:
    """Seconds per step of every candidate, interleaved: round after round, each candidate in turn is prepared by
    `trial(settings)` (which returns its step), stepped `warmup` times untimed and `steps` times timed, so load on a
    shared machine hits all alike. Only a clear loser, slower than `drop_above` x the fastest in the first round
    (e.g. bf16 without fast kernels), is not timed again: a tighter cut let one load spike in round 1 drop the
    candidate that was in fact fastest (bench/RESULTS.md, "Speed by measurement")."""
    timer = timer or now
    times: dict[SpeedSettings, list[float]] = {c: [] for c in cands}
    live = list(cands)
    for r in range(rounds):
        for c in live:
            step = trial(c)
            for _ in range(warmup):
                step()
            sync()
            start = timer()
            for _ in range(steps):
                step()
            sync()
            times[c].append((timer() - start) / steps)
        if r == 0 and len(live) > 1:
            best = min(times[c][0] for c in live)
            live = [c for c in live if times[c][0] <= drop_above * best]
    return times


def step_time(seconds: Sequence[float]) -> float:
    """A candidate's step time from its rounds: the fastest round. Load on a shared machine only ever adds time, so
    the minimum is the estimate least moved by it (a median still carries any load that lasted half the rounds)."""
    return min(seconds)


def choose(times: dict[SpeedSettings, list[float]], margin: float = 0.03) -> SpeedSettings:
    """The fastest candidate by its step_time; the first (the plain path) unless another beats it by more than
    `margin` (a few percent is within the noise of a short measurement and not worth different numerics)."""
    best_times = {c: step_time(v) for c, v in times.items()}
    first = next(iter(times))
    best = min(best_times, key=best_times.get)
    return first if best_times[first] <= (1 + margin) * best_times[best] else best


def compile_worth_trying(eager_seconds: float, run_steps: int, compile_estimate: float, best_gain: float = 0.3
                         ) -> bool:
    """Whether a run of `run_steps` could repay torch.compile at all: even at `best_gain` (a 30% faster step, more
    than it gave in any measured CPU step: bench/RESULTS.md) the saving must exceed the estimated compile time."""
    return eager_seconds * best_gain * run_steps > compile_estimate


def compile_pays(eager_seconds: float, compiled_seconds: float, compile_seconds: float, run_steps: int) -> bool:
    """Whether the measured compiled step repays its measured compile time over the run's steps."""
    return (eager_seconds - compiled_seconds) * run_steps > compile_seconds


def time_compile(trial: Callable[[SpeedSettings], Callable[[], object]], eager: SpeedSettings, rounds: int = 3,
                 steps: int = 1, timer: Callable[[], float] | None = None, sync: Callable[[], None] = lambda: None
                 ) -> tuple[float, dict[SpeedSettings, list[float]]]:
    """(compile seconds, interleaved timings of `eager` and its compiled twin): the compiled step's first call,
    less an eager step, is the compile cost."""
    timer = timer or now
    compiled = dataclasses.replace(eager, compile=True)
    step = trial(compiled)
    sync()
    start = timer()
    step()
    sync()
    first = timer() - start
    times = time_candidates(trial, [eager, compiled], rounds, steps, warmup=1, drop_above=float("inf"), timer=timer,
                            sync=sync)
    return max(0.0, first - step_time(times[eager])), times


def measure_choice(trial: Callable[[SpeedSettings], Callable[[], object]], cands: Sequence[SpeedSettings],
                   compile: str = "off", run_steps: int = 0, compile_estimate: float = COMPILE_ESTIMATE_S,
                   timer: Callable[[], float] | None = None, sync: Callable[[], None] = lambda: None,
                   rounds: int = 3, steps: int = 1) -> Choice:
    """The measured choice among `cands` (eager), then torch.compile of the winner: with compile "on" always; with
    "auto" timed only when the run could repay `compile_estimate` seconds (compile_worth_trying) and taken when its
    measured cost is repaid (compile_pays). One candidate and no compile trial: nothing is timed."""
    if len(cands) == 1 and compile != "auto":
        return Choice(dataclasses.replace(cands[0], compile=compile == "on"), "set")
    times = time_candidates(trial, cands, rounds, steps, timer=timer, sync=sync) if len(cands) > 1 else {}
    best = choose(times) if times else cands[0]
    choice = Choice(best, "measured", {c.name: step_time(v) for c, v in times.items()})
    if compile == "on":
        choice.settings = dataclasses.replace(best, compile=True)
        return choice
    if compile != "auto":
        return choice
    eager = choice.timings.get(best.name)
    if eager is None:  # one eager candidate: its step time comes from the compile trial
        eager = step_time(time_candidates(trial, [best], 1, steps, timer=timer, sync=sync)[best])
        choice.timings[best.name] = eager
    if not compile_worth_trying(eager, run_steps, compile_estimate):
        choice.note = f"compile not tried: {run_steps} steps cannot repay ~{compile_estimate:.0f} s of compiling"
        return choice
    return decide_compile(choice, trial, run_steps, timer, sync, rounds, steps)


def beside_compiled(eager: SpeedSettings) -> str:
    """The timings' name of `eager`'s step as timed in the compile trial, interleaved with its compiled twin."""
    return f"{eager.name} beside compiled"


def decide_compile(choice: Choice, trial, run_steps: int, timer=None, sync=lambda: None, rounds: int = 3,
                   steps: int = 1) -> Choice:
    """`choice` with torch.compile of its settings timed against them and taken where it repays its compile time."""
    eager = dataclasses.replace(choice.settings, compile=False)
    seconds, times = time_compile(trial, eager, rounds, steps, timer, sync)
    compiled = dataclasses.replace(eager, compile=True)
    best_times = {c: step_time(v) for c, v in times.items()}
    # the eager step timed beside the compiled one gets its own name: on CPUs every step ran up to 2.4x slower in
    # the rounds after a compile than before it (bench/RESULTS.md), so the two are compared with each other only
    choice.timings.update({beside_compiled(eager): best_times[eager], compiled.name: best_times[compiled]})
    choice.compile_seconds = seconds
    if compile_pays(best_times[eager], best_times[compiled], seconds, run_steps):
        choice.settings = compiled
    return choice


def reuse_choice(cached: Choice, compile: str, run_steps: int, compile_estimate: float) -> Choice | None:
    """A cached choice for a run of `run_steps`: its eager settings, with torch.compile decided again for this run
    (on / off as set; auto from the cached compile timing when there is one). None when compile is auto, was never
    timed, and this run is long enough that it could pay: then it must be timed."""
    eager = dataclasses.replace(cached.settings, compile=False)
    choice = Choice(eager, "cached", dict(cached.timings), cached.compile_seconds, cached.note)
    compiled = dataclasses.replace(eager, compile=True)
    if compile == "on":
        choice.settings = compiled
    if compile != "auto":
        return choice
    timed = {beside_compiled(eager), compiled.name} <= set(cached.timings) and cached.compile_seconds is not None
    if timed:
        if compile_pays(cached.timings[beside_compiled(eager)], cached.timings[compiled.name], cached.compile_seconds,
                        run_steps):
            choice.settings = compiled
        return choice
    eager_seconds = cached.timings.get(eager.name)
    if eager_seconds is None or not compile_worth_trying(eager_seconds, run_steps, compile_estimate):
        return choice
    return None


# --- applying the settings ---------------------------------------------------------------------------------------
def apply_layout(net: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """`net`'s parameters in channels_last (convolutions then run NHWC) or back in the contiguous format, in place."""
    return net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def speed_up(net: torch.nn.Module, settings: SpeedSettings):
    """The callable to use in hot loops: `net` in the settings' memory format (converted in place), compiled when
    they say so (replaying CUDA graphs with cuda_graphs). `net` itself stays the module whose state_dict is saved, so
    checkpoint keys never carry the wrapper's prefix."""
    apply_layout(net, settings.channels_last)
    if not settings.compile:
        return net
    return torch.compile(net, mode="reduce-overhead" if settings.cuda_graphs else None)
