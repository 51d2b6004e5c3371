"""What the upsample stage writes per cell, its MLflow runs, and the cascade's evaluation as the paper's Table 6.

Output folder OUT (a sample folder that `adm evaluate` reads): plan.json, shards/part-NNNNN.npz (what the actors
write), then per chosen base cell <key> two cells:

* <key>+U/: the upsampler's samples (base + U): samples_NxHxWxC.npz (arr_0 uint8 NHWC, arr_1 labels), grid.png,
  cell.json (the base cell's coordinates and compute plus the upsampler's);
* <key>+bilinear/: the same base samples brought to the large size bilinearly (the upsampler's own input filter),
  so that the base model is measured against the same large reference (base).

The table (``cascade_section``): for each base cell, the base and base + U at the large size with their step split
(base steps / upsampler steps), FID, sFID, precision and recall, and the paper's claims checked against them
(Sec. 5.2: guidance trades recall for precision, upsampling raises precision and keeps recall, the two complement
each other).
"""

import io
import json
import math
import posixpath
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from components.config.grid import parse_sampler
from components.images import to_model_input, to_uint8
from components.superres import upsample_bilinear
from pipelines.infra import tags
from pipelines.infra.storage import npz_bytes, read_bytes, read_npz, write_bytes_atomic
from pipelines.infra.tracking import Tracker
from pipelines.stages import comparisons
from pipelines.stages.grids import labeled_grid
from pipelines.stages.report import with_interval
from pipelines.stages.sample_outputs import shard_url

UPSAMPLED, BILINEAR = "U", "bilinear"  # the two cells made of each base cell: <key>+U and <key>+bilinear


def cascade_key(base_key: str, how: str) -> str:
    """The cell key (and folder) of a base cell's upsampling (how = U) or its bilinear baseline (how = bilinear)."""
    return f"{base_key}+{how}"


@dataclass
class UpsampleResult:
    out: str
    npz: dict  # cascade key -> URL of its NPZ
    grids: dict  # cascade key -> URL of its grid PNG
    cells: dict = field(default_factory=dict)  # cascade key -> its cell.json
    run_ids: dict = field(default_factory=dict)  # cascade key -> MLflow run id
    computed_shards: int = 0
    skipped_shards: int = 0
    busy_seconds: float = 0.0


def _write_cell(job, key: str, images: np.ndarray, labels: np.ndarray, record: dict, caption: str) -> tuple:
    folder = posixpath.join(job.out.rstrip("/"), key)
    npz = posixpath.join(folder, f"samples_{'x'.join(str(d) for d in images.shape)}.npz")
    write_bytes_atomic(npz, npz_bytes(arr_0=images, arr_1=labels))
    grid = posixpath.join(folder, "grid.png")
    write_bytes_atomic(grid, labeled_grid(images, labels, caption, job.class_names))
    write_bytes_atomic(posixpath.join(folder, "cell.json"), json.dumps(record, indent=1).encode())
    return npz, grid


def bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 images brought to `size` px as the upsampler sees its input (superres.upsample_bilinear)."""
    return to_uint8(upsample_bilinear(to_model_input(images), (size, size)))


def assemble(job, base: dict, shards, ref) -> UpsampleResult:
    """Per base cell ({key: its Source}) of the UpsampleJob `job`: the upsampled cell and its bilinear baseline, from
    the shard files and the base NPZs, each with its cell.json."""
    parts = [read_npz(shard_url(job.out, k)) for k in range(len(shards))]
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    cfg, size = job.config, ref.config.image_size
    up_steps = parse_sampler(cfg.sampler).steps or ref.process.steps
    result = UpsampleResult(job.out, {}, {})
    for key, source in base.items():
        rows = np.flatnonzero(merged["cells"] == key)
        rows = rows[np.argsort(merged["indices"][rows], kind="stable")]
        cell = dict(source.cell or {"cell": key})
        if "sample_seconds" in cell:  # the base cell's actor time, not this cell's
            cell["base_sample_seconds"] = cell.pop("sample_seconds")
        base_evals = float(cell.get("network_evals", 0.0))
        base_seconds = float(cell.get("seconds_per_sample", 0.0))
        shared = {**cell, "base_cell": key, "resolution": size, "base_steps": cell.get("steps")}
        up_evals = float(merged["network_evals"][rows].mean())
        seconds = float(merged["seconds"][rows].sum())
        records = {
            UPSAMPLED: {**shared, "stage": "base+U", "upsampler_sampler": cfg.sampler, "upsampler_steps": up_steps,
                        "low_res_noise": cfg.low_res_noise, "upsampler_network_evals": up_evals,
                        "network_evals": base_evals + up_evals, "upsample_seconds": seconds,
                        "seconds_per_sample": base_seconds + seconds / len(rows)},
            BILINEAR: {**shared, "stage": "base", "upsampler_sampler": BILINEAR, "upsampler_steps": 0,
                       "upsampler_network_evals": 0.0},
        }
        low = read_npz(source.urls[0])["arr_0"]
        images = {UPSAMPLED: merged["images"][rows], BILINEAR: bilinear(low, size)}
        for how, record in records.items():
            ckey = cascade_key(key, how)
            record["cell"] = ckey
            label = f"{cell.get('sampler', '')} s={cell.get('guidance_scale', math.nan):g} + {how}"
            result.npz[ckey], result.grids[ckey] = _write_cell(job, ckey, images[how], merged["labels"][rows],
                                                               record, f"{label}, {len(rows)} samples")
            result.cells[ckey] = record
    return result


def log_to_mlflow(job, result: UpsampleResult, log=print) -> UpsampleResult:
    """One child run per cascade cell (upsampled and bilinear): its coordinates and compute as params and numeric
    metrics, the grid as an image artifact, the NPZ URL as a tag."""
    tracker = Tracker(job.tracking_uri)
    parent = job.parent_run_id or tracker.start_run(job.experiment, "upsample", tags={tags.STAGE: "upsample"})
    for ckey, record in result.cells.items():
        run_id = tracker.start_run(job.experiment, f"upsample-{ckey.replace('/', '-')}", parent,
                                   tags={tags.STAGE: "upsample", tags.SAMPLES_NPZ: result.npz[ckey],
                                         tags.CELL: ckey})
        tracker.log_params(run_id, {"base_cell": record["base_cell"], "stage": record["stage"],
                                    "upsampler_sampler": record["upsampler_sampler"], "upsampler": job.upsampler,
                                    "samples": job.samples, "seed": job.config.seed,
                                    "low_res_noise": job.config.low_res_noise})
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracker.log_metrics(run_id, numbers, step=0)
        tracker.log_url(run_id, result.grids[ckey])
        tracker.end_run(run_id)
        result.run_ids[ckey] = run_id
    if job.parent_run_id is None:
        tracker.end_run(parent)
    log(f"MLflow: {len(result.cells)} child runs under {parent} at {tracker.uri}")
    return result


def write_sheet(out: str, grids: dict) -> str:
    """cascade.png in OUT: a row per base cell, its bilinear baseline beside its upsampling; returns its URL."""
    keys = sorted({k.rsplit("+", 1)[0] for k in grids})
    tiles = {k: Image.open(io.BytesIO(read_bytes(url))).convert("RGB") for k, url in grids.items()}
    width, height = max(t.width for t in tiles.values()), max(t.height for t in tiles.values())
    sheet = Image.new("RGB", (2 * width, height * len(keys)), "white")
    for i, key in enumerate(keys):
        for j, how in enumerate((BILINEAR, UPSAMPLED)):
            if cascade_key(key, how) in tiles:
                sheet.paste(tiles[cascade_key(key, how)], (j * width, i * height))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    url = posixpath.join(out.rstrip("/"), "cascade.png")
    write_bytes_atomic(url, buffer.getvalue())
    return url


# --- the evaluation of the cascade ---------------------------------------------------------------------------------
def log_cascade_evaluation(job, result, log=print):
    """Each cascade row's metrics into its upsample run (job.cell_run_ids; else a new evaluate-<cell> run under the
    evaluate run), and the rows as evaluation/cascade.json on the evaluate run."""
    tracker = Tracker(job.tracking_uri)
    parent = job.parent_run_id or tracker.start_run(job.experiment, "evaluate", tags={tags.STAGE: "evaluate"})
    for row in result.rows:
        run_id = job.cell_run_ids.get(row["cell"])
        if run_id is None:
            run_id = tracker.start_run(job.experiment, f"evaluate-{row['cell'].replace('/', '-')}", parent,
                                       tags={tags.STAGE: "evaluate", tags.CELL: row["cell"]})
            tracker.end_run(run_id)
        tracker.log_metrics(run_id, {k: v for k, v in row.items() if isinstance(v, (int, float))
                                     and not isinstance(v, bool)}, step=0)
        result.run_ids[row["cell"]] = run_id
    tracker.log_table(parent, result.rows, "evaluation/cascade.json")
    if job.parent_run_id is None:
        tracker.end_run(parent)
    log(f"MLflow: the cascade's metrics of {len(result.rows)} cells under run {parent}")
    return result


def log_cascade_summary(tracker, run_id: str, rows: list, cascade_rows: list, pairs: list) -> None:
    """The cascade's table on the pipeline run: evaluation/cascade.json, the paired differences its claims rest on
    (evaluation/cascade_pairs.json) and evaluation/cascade.md."""
    tracker.log_table(run_id, cascade_rows, "evaluation/cascade.json")
    if pairs:
        tracker.log_table(run_id, pairs, "evaluation/cascade_pairs.json")
    tracker.log_text(run_id, cascade_section(rows, cascade_rows, pairs), "evaluation/cascade.md")


def _system(row: dict) -> str:
    guided = row.get("guidance_scale", 0) not in (0, 0.0)
    name = f"guided base ({row.get('guidance_method', 'classifier')} s={row['guidance_scale']:g})" if guided \
        else "base"
    return name + (" + U" if row.get("stage") == "base+U" else "")


def _steps(row: dict) -> str:
    up = row.get("upsampler_steps") or "-"
    return f"{row.get('base_steps', '?')}/{up}"


def _number(value) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def cascade_table(rows: list, cascade_rows: list) -> str:
    """Markdown: per base cell (unguided first), base and base + U at the large size, with the step split and the
    base cell's FID at its own size (from the grid's `rows`)."""
    small = {r.get("cell"): r for r in rows}
    ordered = sorted(cascade_rows, key=lambda r: (r.get("guidance_scale", 0), r["base_cell"],
                                                  r.get("stage") == "base+U"))
    head = ("| system | base cell | steps (base/U) | network_evals | seconds_per_sample | num_samples | fid | sfid "
            "| precision | recall | base fid at its size |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in ordered:
        base_fid = small.get(r["base_cell"], {}).get("fid")
        metrics = " | ".join(with_interval(r, m) for m in ("fid", "sfid", "precision", "recall"))
        lines.append(f"| {_system(r)} | {r['base_cell']} | {_steps(r)} | {_number(r.get('network_evals'))} | "
                     f"{_number(r.get('seconds_per_sample'))} | {r.get('num_samples', '-')} | {metrics} | "
                     f"{_number(base_fid)} |")
    return "\n".join(lines)


def _roles(cascade_rows: list):
    """The unguided base cell and the most guided one, or None where the rows lack either (or one of their rows)."""
    by = {(r["base_cell"], r.get("stage")): r for r in cascade_rows}
    scale = {r["base_cell"]: r.get("guidance_scale", 0) for r in cascade_rows}
    unguided = sorted(c for c in scale if scale[c] == 0)
    guided = sorted((c for c in scale if scale[c] != 0), key=scale.get)
    if not unguided or not guided or not all((c, s) in by for c in scale for s in ("base", "base+U")):
        return None
    return by, unguided[0], guided[-1]


# what each claim of the paper (Sec. 5.2) says of a paired difference A - B: "up" or "down" (resolved that way), or
# "kept" (not resolved down: upsampling may keep or raise recall)
CLAIMS = {
    "guidance": "guidance trades recall for precision",
    "upsampling unguided": "upsampling raises precision and keeps recall (unguided)",
    "upsampling guided": "upsampling raises precision and keeps recall (guided)",
    "complement": "guidance and upsampling complement each other (guided base + U has the best FID)",
}


def cascade_pairs(cascade_rows: list, cells: dict, level: float) -> list:
    """The paired differences (A minus B on the same seeds and labels, with their interval at `level`) that the
    paper's claims rest on, each with the claim it tests and the direction the claim expects; [] without the rows or
    the resampled cells (evaluate.bootstrap = 0)."""
    roles = _roles(cascade_rows)
    if roles is None or not all(r["cell"] in cells for r in cascade_rows):
        return []
    by, u, g = roles
    tests = [("guidance", (g, "base"), (u, "base"), "precision", "up"),
             ("guidance", (g, "base"), (u, "base"), "recall", "down")]
    for claim, cell in (("upsampling unguided", u), ("upsampling guided", g)):
        tests += [(claim, (cell, "base+U"), (cell, "base"), "precision", "up"),
                  (claim, (cell, "base+U"), (cell, "base"), "recall", "kept")]
    tests += [("complement", (g, "base+U"), other, "fid", "down") for other in ((u, "base"), (u, "base+U"),
                                                                                (g, "base"))]
    return [{"claim": claim, "expects": expects, "level": level,
             **comparisons.paired(by[a], by[b], cells, metric, level)} for claim, a, b, metric, expects in tests]


def _agrees(pair: dict) -> bool | None:
    """Whether the pair shows what its claim expects: True, False (resolved the other way), None (not resolved)."""
    if pair["expects"] == "kept":
        return not (pair["resolved"] and pair["delta"] < 0)
    if not pair["resolved"]:
        return None
    return (pair["delta"] > 0) == (pair["expects"] == "up")


def claims(cascade_rows: list, pairs: list) -> list[str]:
    """The paper's claims (Sec. 5.2) checked against the paired differences of cascade_pairs, one line each: held
    (every difference resolved the expected way), did not hold (one resolved the other way) or not resolved."""
    if _roles(cascade_rows) is None:
        return ["(the claims need the unguided and a guided cell, each with and without the upsampler)"]
    if not pairs:
        return ["(the claims need the cells' intervals: evaluate.bootstrap > 0)"]
    names = {r["cell"]: _system(r) for r in cascade_rows}
    out = []
    for claim, text in CLAIMS.items():
        mine = [p for p in pairs if p["claim"] == claim]
        agree = [_agrees(p) for p in mine]
        verdict = "did not hold" if False in agree else "not resolved" if None in agree else "held"
        out.append(f"{text}: {verdict} (" + "; ".join(
            f"{names[p['a']]} - {names[p['b']]}: {comparisons.format_difference(p)}" for p in mine) + ")")
    return out


def cascade_section(rows: list, cascade_rows: list, pairs: list | None = None) -> str:
    """The report's cascade section: the table, and the claims judged on the paired differences `pairs`
    (cascade_pairs)."""
    size = next((r.get("resolution") for r in cascade_rows if r.get("resolution")), "?")
    text = (f"## The cascade at {size}x{size} (the paper's Table 6 shape)\n\nEvery row against the same "
            f"{size}px reference; base rows are the base samples brought to {size}px bilinearly, base + U rows the "
            "upsampler's samples conditioned on them; steps are the base sampler's and the upsampler's.\n\n"
            f"{cascade_table(rows, cascade_rows)}\n\n")
    level = f" at {pairs[0]['level']:.0%}" if pairs else ""
    return (text + f"The paper's claims (Sec. 5.2), on paired differences{level} (same seeds and labels):\n\n"
            + "\n".join(f"- {line}" for line in claims(cascade_rows, pairs or [])) + "\n")

