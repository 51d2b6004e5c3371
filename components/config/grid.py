"""The sampling grid's vocabulary: sampler strings, guidance methods and intervals, and the cells they make (each
sampler x method x scale x interval of the config's sample section is a cell).

Sampler strings (``parse_sampler``):

* ``"250"``, ``"10,10,5"``, ``""``: ancestral DDPM (Ho et al. 2020) on the process respaced by that string (Nichol &
  Dhariwal 2021, Sec. 4): 250 steps, sections of 10, 10 and 5 steps, or every trained timestep; one network
  evaluation per step.
* ``"ddim25"``: DDIM (Song et al. 2021) on 25 evenly strided trained timesteps; 25 network evaluations.
* ``"dpm++2m-10"``: DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, data prediction, multistep) on 10 trained timesteps
  uniform in log-SNR from sigma 80 down to t = 0; 10 network evaluations (the last step, to sigma = 0, reuses the
  last one).
* ``"heun-18"``: EDM's Heun sampler (Karras et al. 2022, Alg. 2) on 18 noise levels (Karras spacing, rho = 7, from
  sigma 80); 2 * 18 - 1 = 35 network evaluations (no second-order correction on the last step, to sigma = 0).

Pure Python (no torch): reading a sampler string or a grid needs no network. The loops are in sampling.py
(``sampler_loop`` maps a spec to its loop); guided.py composes a batch of cells into the model and cond_fn a loop
takes.
"""

import re
from dataclasses import dataclass

from .sections import ConfigError

KINDS = ("ddpm", "ddim", "dpm++2m", "heun")
_HELP = ("use DDPM step counts ('250' or sections '10,10,5'), 'ddimN' (e.g. ddim25), 'dpm++2m-N' (e.g. dpm++2m-10) "
         "or 'heun-N' (e.g. heun-18), N >= 1")
_SOLVER = re.compile(r"(dpm\+\+2m|heun)-(\d+)")


@dataclass(frozen=True)
class SamplerSpec:
    """A parsed sampler string. ``respacing`` is the process the loop runs on (``create_diffusion(cfg, respacing)``):
    DDPM and DDIM run on their respaced process; the ODE solvers get every trained timestep ("") and choose their own
    ``steps`` among them. ``steps`` is None for DDPM on every trained timestep."""

    name: str
    kind: str  # one of KINDS
    steps: int | None
    respacing: str

    def network_evals(self, num_timesteps: int) -> int:
        """Diffusion-network evaluations per sample, for a network trained on ``num_timesteps`` timesteps."""
        if self.steps is None:
            return num_timesteps
        return 2 * self.steps - 1 if self.kind == "heun" else self.steps


def _positive(text: str, name: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"sampler {name!r}: the step count must be a whole number >= 1; {_HELP}")
    return int(text)


def parse_sampler(name: str) -> SamplerSpec:
    """The sampler string of the module docstring -> SamplerSpec; ConfigError (naming the string) when malformed.
    Whether a DDIM stride exists for N of T steps is checked where T is known (respacing.space_timesteps)."""
    name = str(name).strip().lower()
    if name == "":
        return SamplerSpec(name, "ddpm", None, "")
    if name.startswith("ddim"):
        return SamplerSpec(name, "ddim", _positive(name[4:], name), name)
    solver = _SOLVER.fullmatch(name)
    if solver:
        return SamplerSpec(name, solver.group(1), _positive(solver.group(2), name), "")
    parts = [p.strip() for p in name.split(",")]
    if all(p.isdigit() for p in parts):
        return SamplerSpec(name, "ddpm", sum(_positive(p, name) for p in parts), name)
    raise ConfigError(f"sampler {name!r} is unknown; {_HELP}")


# --- the grid: cells of (sampler, guidance scale, guidance interval) ------------------------------------------------
ALL_LEVELS = "all"
_INTERVAL_HELP = "use 'all' or 'LO:HI' noise levels sigma = sqrt((1 - abar) / abar) with 0 <= LO <= HI, e.g. 0.3:5"


def parse_interval(text: str) -> tuple[float, float] | None:
    """A guidance interval string -> (sigma_lo, sigma_hi), or None for "all" (guidance at every noise level)."""
    text = str(text).strip().lower()
    if text == ALL_LEVELS:
        return None
    lo, sep, hi = text.partition(":")
    try:
        bounds = (float(lo), float(hi)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or not (0 <= bounds[0] <= bounds[1]) or bounds[0] == float("inf"):
        raise ConfigError(f"guidance interval {text!r} is not valid; {_INTERVAL_HELP}")
    return bounds


# how a cell guides: the noisy classifier (Dhariwal & Nichol 2021), classifier-free guidance (Ho & Salimans 2022),
# both (the CFG eps, then the classifier term on top), or autoguidance (Karras et al. 2024: a weaker version of the
# model itself guides it), each at the cell's scale s: classifier gradient s grad log p(y|x); CFG eps_c + s (eps_c -
# eps_u); autoguidance eps_main + s (eps_main - eps_guide) (w = 1 + s in the eps_ref + w (eps - eps_ref) form of
# Ho & Salimans and EDM2; Ho & Salimans' own w is this s). s = 0 is the conditional model for every method: one
# cell, "classifier", stands for it.
METHODS = ("classifier", "cfg", "both", "auto")


@dataclass(frozen=True)
class Cell:
    """One cell of the sampling grid: a sampler string, a guidance method and scale, and the interval of noise levels
    it guides in (None: all). ``key`` names its output folder and runs; it is the same wherever the cell is sampled."""

    sampler: str
    scale: float
    interval: tuple[float, float] | None = None
    method: str = "classifier"

    @property
    def interval_text(self) -> str:
        return ALL_LEVELS if self.interval is None else f"{self.interval[0]:g}:{self.interval[1]:g}"

    @property
    def classifier_scale(self) -> float:
        return self.scale if self.method in ("classifier", "both") else 0.0

    @property
    def cfg_scale(self) -> float:
        return self.scale if self.method in ("cfg", "both") else 0.0

    @property
    def auto_scale(self) -> float:
        return self.scale if self.method == "auto" else 0.0

    @property
    def key(self) -> str:
        suffix = "" if self.interval is None else f"_sigma_{self.interval[0]:g}-{self.interval[1]:g}"
        prefix = "" if self.method == "classifier" else f"{self.method}_"
        return f"{self.sampler}/{prefix}scale_{self.scale:g}{suffix}"

    @property
    def label(self) -> str:
        """Short and readable, for run names and captions: "dpm++2m-10 cfg s=4 sigma in [0.3, 5]"."""
        where = "" if self.interval is None else f" sigma in [{self.interval[0]:g}, {self.interval[1]:g}]"
        how = "" if self.method == "classifier" else f" {self.method}"
        return f"{self.sampler}{how} s={self.scale:g}{where}"


def parse_method(text: str) -> str:
    method = str(text).strip().lower()
    if method not in METHODS:
        raise ConfigError(f"guidance method {text!r} is unknown; use classifier, cfg (classifier-free), both or auto "
                          "(autoguidance)")
    return method


def grid_cells(samplers, scales, intervals, methods=("classifier",)) -> list[Cell]:
    """Every sampler x method x scale x interval, in that order. At scale 0 nothing is guided, so only one cell
    (method classifier, interval "all") is made there: its samples would be the same bytes in every other."""
    cells = []
    for sampler in samplers:
        name = parse_sampler(sampler).name
        for method in methods:
            for scale in scales:
                for text in intervals:
                    unguided = float(scale) == 0
                    cell = Cell(name, float(scale), None if unguided else parse_interval(text),
                                "classifier" if unguided else parse_method(method))
                    if cell not in cells:
                        cells.append(cell)
    return cells


def metric_name(sampler: str) -> str:
    """A sampler string as MLflow accepts in a metric key ("+" is not allowed there): dpm++2m-10 -> dpmpp2m-10."""
    return sampler.replace("+", "p")
