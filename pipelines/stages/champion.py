"""The champion policy: which cell of the grid decides the champion, and in which metric. The register stage uses it
to challenge the champion, the evaluate stage to draw the champion's line."""

from components.config import AUTO, HIGHER_IS_BETTER, ConfigError, Preset
from components.config.grid import grid_cells


def champion_cell(preset, rows: list | None = None) -> dict:
    """The cell whose metric decides the champion: evaluate.champion_sampler and champion_method (default the first
    of sample.samplers and guidance_methods) at evaluate.champion_scale, guided in the first of
    sample.guidance_intervals (at scale 0: the one unguided cell). With champion_scale=auto, the scale of that
    sampler, method and interval whose row in `rows` has the best champion metric."""
    sample, cfg = preset.sample, preset.evaluate
    sampler = cfg.champion_sampler or sample.samplers[0]
    method = cfg.champion_method or sample.guidance_methods[0]

    def cell_at(scale: float) -> dict:
        (cell,) = grid_cells([sampler], [scale], sample.guidance_intervals[:1], [method])
        return {"sampler": cell.sampler, "guidance_method": cell.method, "guidance_scale": float(scale),
                "guidance_interval": cell.interval_text}

    if cfg.champion_scale != AUTO:
        return cell_at(float(cfg.champion_scale))
    if rows is None:
        raise ValueError("evaluate.champion_scale=auto: the cell is chosen from the evaluation rows; pass them")
    scored = [(row, cell_at(s)) for s in sample.guidance_scales for row in [_row_of(rows, cell_at(s))] if row]
    if not scored or any(cfg.champion_metric not in row for row, _ in scored):
        raise ConfigError(f"evaluate.champion_scale=auto: no scale of {sampler} ({method}) has "
                          f"evaluate.champion_metric={cfg.champion_metric!r} (evaluate.features={cfg.features})")
    sign = -1 if cfg.champion_metric in HIGHER_IS_BETTER else 1
    return min(scored, key=lambda pair: sign * float(pair[0][cfg.champion_metric]))[1]


def _row_of(rows: list, cell: dict) -> dict | None:
    implied = {"guidance_method": "classifier", "guidance_interval": "all"}  # rows of grids without these axes
    return next((r for r in rows if all(r.get(k, implied.get(k)) == v for k, v in cell.items())), None)


def champion_row(preset: Preset, rows: list) -> dict:
    cfg, cell = preset.evaluate, champion_cell(preset, rows)
    row = _row_of(rows, cell)
    if row is None:
        raise ConfigError(f"the champion cell {cell} (evaluate.champion_sampler, _method, _scale) is not one of the "
                          f"sampled cells {[r['cell'] for r in rows]}")
    if cfg.champion_metric not in row:
        raise ConfigError(f"evaluate.champion_metric={cfg.champion_metric!r} was not computed "
                          f"(evaluate.features={cfg.features})")
    return row


def improves(metric: str, delta: float) -> bool:
    """Whether new - old = `delta` is an improvement of `metric`."""
    return delta > 0 if metric in HIGHER_IS_BETTER else delta < 0
