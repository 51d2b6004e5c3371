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
from pipelines.stages.grids import labeled_grid
from pipelines.stages.sample_outputs import shard_url

UPSAMPLED, BILINEAR = "U", "bilinear"  # the two cells made of each base cell: <key>+U and <key>+bilinear
KEPT = 0.05  # a change of precision or recall smaller than this counts as kept (about the noise of 200 samples)


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


def log_cascade_summary(tracker, run_id: str, rows: list, cascade_rows: list) -> None:
    """The cascade's table on the pipeline run: evaluation/cascade.json and evaluation/cascade.md."""
    tracker.log_table(run_id, cascade_rows, "evaluation/cascade.json")
    tracker.log_text(run_id, cascade_section(rows, cascade_rows), "evaluation/cascade.md")


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
        lines.append(f"| {_system(r)} | {r['base_cell']} | {_steps(r)} | {_number(r.get('network_evals'))} | "
                     f"{_number(r.get('seconds_per_sample'))} | {r.get('num_samples', '-')} | {_number(r.get('fid'))} "
                     f"| {_number(r.get('sfid'))} | {_number(r.get('precision'))} | {_number(r.get('recall'))} | "
                     f"{_number(base_fid)} |")
    return "\n".join(lines)


def _change(before: float, after: float) -> str:
    delta = after - before
    way = "kept" if abs(delta) < KEPT else "up" if delta > 0 else "down"
    return f"{before:.3g} -> {after:.3g} ({way})"


def claims(cascade_rows: list) -> list[str]:
    """The paper's claims (Sec. 5.2) checked against the rows, one line each: what held and what did not. Needs an
    unguided and a guided base cell with both rows; precision or recall within KEPT count as kept."""
    by = {(r["base_cell"], r.get("stage")): r for r in cascade_rows if "precision" in r}
    cells = sorted({r["base_cell"] for r in cascade_rows}, key=lambda c: by.get((c, "base"), {}).get(
        "guidance_scale", 0))
    unguided = [c for c in cells if by.get((c, "base"), {}).get("guidance_scale", 1) == 0]
    guided = [c for c in cells if c not in unguided]
    if not unguided or not guided or not all((c, s) in by for c in cells for s in ("base", "base+U")):
        return ["(the claims need the unguided and a guided cell, each with and without the upsampler)"]
    u, g = unguided[0], guided[-1]
    out = []
    p0, p1 = by[(u, "base")], by[(g, "base")]
    held = p1["precision"] - p0["precision"] >= KEPT and p0["recall"] - p1["recall"] >= KEPT
    out.append(f"guidance trades recall for precision: {'held' if held else 'did not hold'} (base -> guided base: "
               f"precision {_change(p0['precision'], p1['precision'])}, recall {_change(p0['recall'], p1['recall'])})")
    for name, cell in (("unguided", u), ("guided", g)):
        a, b = by[(cell, "base")], by[(cell, "base+U")]
        held = b["precision"] - a["precision"] >= KEPT and abs(b["recall"] - a["recall"]) < KEPT
        out.append(f"upsampling raises precision and keeps recall ({name}): {'held' if held else 'did not hold'} "
                   f"(precision {_change(a['precision'], b['precision'])}, recall "
                   f"{_change(a['recall'], b['recall'])})")
    fids = {key: by[key]["fid"] for key in ((u, "base"), (u, "base+U"), (g, "base"), (g, "base+U"))}
    best = min(fids, key=fids.get)
    held = best == (g, "base+U")
    out.append(f"guidance and upsampling complement each other (guided base + U has the best FID): "
               f"{'held' if held else 'did not hold'} (FID " + ", ".join(
                   f"{_system(by[k])} {v:.4g}" for k, v in fids.items()) + ")")
    return out


def cascade_section(rows: list, cascade_rows: list) -> str:
    """The report's cascade section: the table and the claims."""
    size = next((r.get("resolution") for r in cascade_rows if r.get("resolution")), "?")
    text = (f"## The cascade at {size}x{size} (the paper's Table 6 shape)\n\nEvery row against the same "
            f"{size}px reference; base rows are the base samples brought to {size}px bilinearly, base + U rows the "
            "upsampler's samples conditioned on them; steps are the base sampler's and the upsampler's.\n\n"
            f"{cascade_table(rows, cascade_rows)}\n\n")
    return text + "\n".join(f"- {line}" for line in claims(cascade_rows)) + "\n"

