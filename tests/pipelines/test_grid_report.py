"""The grid's rows downstream of evaluation: the champion cell, the report table grouped by sampler, and the plots
one line per sampler (no Ray, no MLflow: the rows are written here)."""

import pytest

from components.config import ConfigError, apply_overrides
from components.config.presets import get_preset
from pipelines.stages.champion import champion_cell, champion_row
from pipelines.stages.plots import lines_of, tradeoff_figures
from pipelines.stages.report import format_table


def _row(sampler, scale, interval="all", fid=10.0, evals=10.0, passes=10.0, method="classifier"):
    key = f"{sampler}/{'' if method == 'classifier' else method + '_'}scale_{scale:g}" + \
        ("" if interval == "all" else f"_sigma_{interval.replace(':', '-')}")
    return {"cell": key, "sampler": sampler, "guidance_method": method, "guidance_scale": scale,
            "guidance_interval": interval,
            "network_evals": evals, "classifier_passes": passes, "num_samples": 8, "fid": fid, "precision": 0.5,
            "recall": 0.4, "score": 2.0}


ROWS = [_row("ddim25", 0.0, fid=30, passes=0), _row("ddim25", 2.0, fid=20), _row("ddim25", 2.0, "0.3:5", fid=21,
                                                                                passes=6),
        _row("dpm++2m-10", 0.0, fid=31, evals=10, passes=0), _row("dpm++2m-10", 2.0, fid=19, evals=10)]


def test_the_champion_cell_is_the_chosen_sampler_at_the_chosen_scale_guided_everywhere():
    preset = apply_overrides(get_preset("smoke"), ["sample.samplers=ddim25,dpm++2m-10", "evaluate.champion_scale=2",
                                                   "sample.guidance_intervals=all,0.3:5"])
    assert champion_cell(preset) == {"sampler": "ddim25", "guidance_method": "classifier", "guidance_scale": 2.0,
                                     "guidance_interval": "all"}
    assert champion_row(preset, ROWS)["fid"] == 20
    second = apply_overrides(preset, ["evaluate.champion_sampler=DPM++2M-10"])
    assert champion_row(second, ROWS)["fid"] == 19
    narrow = apply_overrides(preset, ["sample.guidance_intervals=0.30:5,all"])  # the first interval decides
    assert champion_row(narrow, ROWS)["fid"] == 21
    with pytest.raises(ConfigError, match="champion cell .* is not one of the sampled cells"):
        champion_row(apply_overrides(preset, ["evaluate.champion_scale=4"]), ROWS)


CFG = [_row("ddim25", 2.0, fid=18, evals=20, passes=0, method="cfg"),
       _row("ddim25", 4.0, fid=25, evals=20, passes=0, method="cfg")]


def test_classifier_free_lines_start_at_the_shared_unguided_cell_and_cost_twice():
    preset = apply_overrides(get_preset("smoke"), ["sample.samplers=ddim25", "evaluate.champion_scale=2",
                                                   "sample.guidance_methods=classifier,cfg",
                                                   "train_diffusion.label_dropout=0.1"])
    assert champion_row(apply_overrides(preset, ["evaluate.champion_method=cfg"]), ROWS + CFG)["fid"] == 18
    assert champion_row(preset, ROWS + CFG)["fid"] == 20
    lines = lines_of(ROWS + CFG)
    assert [r["fid"] for r in lines["ddim25 cfg"]] == [30, 18, 25]  # scale 0 (shared), 2, 4
    assert [r["fid"] for r in lines["ddim25"]] == [30, 20]
    figures = tradeoff_figures(ROWS + CFG, champion_scale=2.0)
    evals = figures["plots/fid_vs_network_evals.png"].axes[0]
    points = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in evals.get_lines()}
    assert points["ddim cfg"] == ([20], [18]) and points["ddim"] == ([10], [20])
    table = format_table(ROWS + CFG)
    assert table.splitlines()[0].startswith("| sampler | guidance_method | guidance_scale |")
    assert "guidance_method" not in format_table(ROWS)


def test_the_table_is_grouped_by_sampler_and_shows_the_interval_only_when_there_is_one():
    lines = format_table(ROWS).splitlines()
    assert lines[0].startswith("| sampler | guidance_scale | guidance_interval | network_evals | classifier_passes |")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["ddim25"] * 3 + ["dpm++2m-10"] * 2
    assert "guidance_interval" not in format_table([r for r in ROWS if r["guidance_interval"] == "all"])


def test_plots_draw_one_line_per_sampler_and_the_compute_plots_at_the_champion_scale():
    figures = tradeoff_figures(ROWS, champion_scale=2.0)
    assert set(figures) == {"plots/fid_vs_scale.png", "plots/precision_vs_recall.png", "plots/score_vs_fid.png",
                            "plots/fid_vs_network_evals.png", "plots/fid_vs_classifier_passes.png"}
    by_scale = figures["plots/fid_vs_scale.png"].axes[0]
    assert sorted(line.get_label() for line in by_scale.get_lines()) == ["ddim25", "dpm++2m-10"]
    for line in by_scale.get_lines():  # the interval's row is not on the scale curves
        assert len(line.get_xdata()) == 2
    evals = figures["plots/fid_vs_network_evals.png"].axes[0]
    assert {line.get_label(): list(line.get_ydata()) for line in evals.get_lines()} == {"ddim": [20],
                                                                                      "dpm++2m": [19]}
    passes = figures["plots/fid_vs_classifier_passes.png"].axes[0]
    ddim = next(line for line in passes.get_lines() if line.get_label() == "ddim25")
    assert list(ddim.get_xdata()) == [6, 10] and list(ddim.get_ydata()) == [21, 20]


def test_auto_champion_scale_picks_the_best_scale_of_the_champion_line():
    preset = apply_overrides(get_preset("smoke"), ["sample.samplers=ddim25,dpm++2m-10", "evaluate.champion_scale=auto",
                                                   "sample.guidance_scales=0,2", "evaluate.champion_metric=fid"])
    rows = ROWS + [_row("ddim25", 4.0, fid=15), _row("ddim25", 8.0, fid=50)]
    preset = apply_overrides(preset, ["sample.guidance_scales=0,2,4,8"])
    assert champion_cell(preset, rows)["guidance_scale"] == 4.0  # fid 15: the lowest of ddim25's scales
    assert champion_row(preset, rows)["fid"] == 15
    accuracy = apply_overrides(preset, ["evaluate.champion_metric=score"])
    high = [dict(r, score=r["guidance_scale"] % 8) for r in rows]  # 0, 2, 4, 0: the highest at 4
    assert champion_cell(accuracy, high)["guidance_scale"] == 4.0
    with pytest.raises(ConfigError, match="no scale of ddim25 .* has evaluate.champion_metric='accuracy'"):
        champion_cell(apply_overrides(preset, ["evaluate.champion_metric=accuracy"]), rows)
    with pytest.raises(ConfigError, match="bad value for evaluate.champion_scale .*or auto"):
        apply_overrides(preset, ["evaluate.champion_scale=best"])


def test_auto_scale_is_recorded_on_the_versions_and_read_by_adm_sample(mlflow_server):
    import argparse

    from mlflow import MlflowClient

    from pipelines.cli.sample import SAMPLE_FLAGS, sample_config
    from pipelines.infra.registry import best_scale
    from pipelines.infra.tracking import Tracker
    from pipelines.stages.register import register

    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("auto-scale"))
    trained = {k: {"model_uri": f"{run.info.artifact_uri}/{k}", "run_id": run.info.run_id}
               for k in ("diffusion", "classifier")}
    preset = apply_overrides(get_preset("smoke"), ["sample.samplers=ddim25", "evaluate.champion_scale=auto",
                                                   "sample.guidance_scales=0,2,4", "evaluate.champion_metric=fid"])
    rows = [_row("ddim25", 0.0, fid=30), _row("ddim25", 2.0, fid=19), _row("ddim25", 4.0, fid=24)]
    out = register(Tracker(mlflow_server), run.info.run_id, preset, "auto", trained, rows, {"adm.pipeline_run": "p"},
                   lambda champion: pytest.fail("the first registration has no champion to challenge"),
                   log=lambda *_: None)
    assert out["diffusion"]["champion"] and out["diffusion"]["value"] == 19
    for kind in ("diffusion", "classifier"):
        version = client.get_model_version_by_alias(f"auto-{kind}", "champion")
        assert version.tags["adm.best_scale"] == "2" and float(version.tags["adm.fid_best_scale"]) == 19
    assert best_scale("models:/auto-diffusion@champion", mlflow_server) == 2.0
    assert best_scale("models:/auto-diffusion/1", mlflow_server) == 2.0 and best_scale("runs:/x", None) is None
    args = argparse.Namespace(**{flag: None for flag in SAMPLE_FLAGS}, preset=None, tracking_uri=mlflow_server,
                              diffusion="models:/auto-diffusion@champion")
    assert sample_config(args).guidance_scales == (2.0,)
    args.scales = "0,8"
    assert sample_config(args).guidance_scales == (0.0, 8.0)


def test_grid_rows_carry_the_dataset_class_names():
    import io

    import numpy as np
    from PIL import Image

    from pipelines.stages.grids import labeled_grid

    images, labels = np.zeros((4, 16, 16, 1), np.uint8), np.array([0, 1, 0, 1])
    margin = {}
    for names in (None, ("T-shirt/top", "Trouser"), ("T-shirt/top", "Trouser", "Pullover")):
        picture = np.asarray(Image.open(io.BytesIO(labeled_grid(images, labels, "ddim25 s=4", names))))
        margin[names and len(names)] = picture[20:, :64]  # the label column, below the caption
    assert not np.array_equal(margin[None], margin[2])  # names written instead of "class 0", "class 1"
    assert np.array_equal(margin[2], margin[3])  # only the sampled classes' names


def test_the_sheet_of_all_cells_puts_each_grid_at_its_method_row_and_scale_column():
    """A row per sampler x method, a column per scale; the one scale-0 cell opens every row. Each grid here is one
    flat colour, so each tile's place can be read back."""
    import io

    import numpy as np
    from PIL import Image

    from components.config.grid import grid_cells
    from pipelines.stages.grids import cells_sheet

    cells = grid_cells(("ddim25", "dpm++2m-10"), (0.0, 1.0, 4.0), ("all",), ("classifier", "cfg"))
    colours = {c.key: (10 * i, 255 - 10 * i, 7 * i) for i, c in enumerate(cells)}

    def png(colour):
        out = io.BytesIO()
        Image.new("RGB", (30, 20), colour).save(out, format="PNG")
        return out.getvalue()

    sheet = np.asarray(Image.open(io.BytesIO(cells_sheet({k: png(c) for k, c in colours.items()}, cells))))
    assert sheet.shape == (4 * 20, 3 * 30, 3)  # rows ddim25 classifier/cfg, dpm++2m-10 classifier/cfg
    order = [("ddim25", "classifier"), ("ddim25", "cfg"), ("dpm++2m-10", "classifier"), ("dpm++2m-10", "cfg")]
    for i, (sampler, method) in enumerate(order):
        prefix = "" if method == "classifier" else "cfg_"
        expected = [f"{sampler}/scale_0", f"{sampler}/{prefix}scale_1", f"{sampler}/{prefix}scale_4"]
        for j, key in enumerate(expected):
            assert tuple(sheet[i * 20 + 10, j * 30 + 15]) == colours[key], (i, j, key)
