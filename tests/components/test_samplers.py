"""Sampler strings: the one parser (components.config.grid.parse_sampler), its errors, and the network evaluations
each string costs."""

import pytest

from components.compute import SampleCost
from components.config import ConfigError
from components.config.grid import parse_sampler


@pytest.mark.parametrize("name,kind,steps,respacing,evals", [
    ("ddim25", "ddim", 25, "ddim25", 25),
    ("250", "ddpm", 250, "250", 250),
    ("10,10,5", "ddpm", 25, "10,10,5", 25),
    ("", "ddpm", None, "", 1000),
    ("dpm++2m-10", "dpm++2m", 10, "", 10),
    ("heun-18", "heun", 18, "", 35),
    (" DDIM50 ", "ddim", 50, "ddim50", 50),
])
def test_sampler_strings(name, kind, steps, respacing, evals):
    spec = parse_sampler(name)
    assert (spec.kind, spec.steps, spec.respacing) == (kind, steps, respacing)
    assert spec.network_evals(1000) == evals


@pytest.mark.parametrize("bad", ["ddim0", "abc", "0", "dpm++2m-0", "heun-", "heun18", "dpm++2m10", "ddim", "10,0",
                                 "ddim-5", "dpm++3m-10", "heun-1.5", "-5"])
def test_bad_sampler_strings_name_the_string_and_the_fix(bad):
    with pytest.raises(ConfigError) as err:
        parse_sampler(bad)
    assert repr(bad.strip().lower()) in str(err.value) and "dpm++2m-10" in str(err.value)


def test_sample_cost_counts_per_row():
    cost = SampleCost(3)
    cost.add_network_eval()
    cost.add_network_eval()
    cost.add_classifier_passes([True, False, True])
    assert cost.network_evals == [2, 2, 2] and cost.classifier_passes == [1, 0, 1]


# --- the grid ---------------------------------------------------------------------------------------------------------
def test_grid_cells_cross_samplers_scales_and_intervals():
    from components.config.grid import grid_cells

    cells = grid_cells(["DDIM25", "dpm++2m-10"], [0, 2.5], ["all", "0.3:5", "0.30:5.0"])
    assert [c.key for c in cells] == ["ddim25/scale_0", "ddim25/scale_2.5", "ddim25/scale_2.5_sigma_0.3-5",
                                      "dpm++2m-10/scale_0", "dpm++2m-10/scale_2.5",
                                      "dpm++2m-10/scale_2.5_sigma_0.3-5"]  # one unguided cell; duplicates once
    assert cells[2].interval == (0.3, 5.0) and cells[2].interval_text == "0.3:5" and cells[1].interval is None
    assert grid_cells(["ddim25"], [1], ["0:inf"])[0].interval == (0.0, float("inf"))


@pytest.mark.parametrize("bad", ["5:1", "-1:2", "1", "a:b", "1:2:3", "", "inf:inf"])
def test_bad_guidance_intervals_name_the_interval_and_the_fix(bad):
    from components.config.grid import parse_interval

    with pytest.raises(ConfigError, match="'all' or 'LO:HI'"):
        parse_interval(bad)


def test_metric_names_are_what_mlflow_accepts():
    import re

    from components.config.grid import metric_name

    for name in ("ddim25", "dpm++2m-10", "heun-18", "10,10,5"):
        assert re.fullmatch(r"[\w\-./ ,]+", metric_name(name))
    assert metric_name("dpm++2m-10") == "dpmpp2m-10"


def test_the_single_sampler_form_still_reads():
    """`sample.sampler=` (DDPM sections whole, commas and all) and configs logged before the grid."""
    from components.config import SampleConfig, preset_from_dict, to_dict
    from components.config.overrides import override_field
    from components.config.presets import get_preset

    assert override_field("sample", SampleConfig(), "sampler", "10,10,5", "x").samplers == ("10,10,5",)
    assert override_field("sample", SampleConfig(), "samplers", "ddim25,heun-18", "x").samplers == ("ddim25",
                                                                                                  "heun-18")
    old = to_dict(get_preset("smoke"))
    del old["sample"]["samplers"]
    old["sample"]["sampler"] = "250"
    assert preset_from_dict(old).sample.samplers == ("250",)


def test_champion_sampler_must_be_in_the_grid():
    from components.config import apply_overrides
    from components.config.presets import get_preset
    from components.config.validation import preset_problems

    preset = apply_overrides(get_preset("smoke"), ["evaluate.champion_sampler=heun-5"])
    assert any("evaluate.champion_sampler='heun-5' is not in sample.samplers=ddim10" in p
               for p in preset_problems(preset))
    ok = apply_overrides(get_preset("smoke"), ["sample.samplers=ddim10,heun-5", "evaluate.champion_sampler=heun-5"])
    assert preset_problems(ok) == []


@pytest.mark.parametrize("preset", ["imagenet64", "imagenet128", "imagenet256", "imagenet512"])
def test_released_presets_take_every_sampler_and_interval(preset):
    """The released ADM-G settings with the solvers and an interval: a valid config, no other change needed."""
    from components.config import apply_overrides
    from components.config.presets import get_preset
    from components.config.validation import preset_problems

    grid = apply_overrides(get_preset(preset), ["sample.samplers=dpm++2m-20,heun-18,ddim25,250",
                                                "sample.guidance_intervals=all,0.3:5"])
    assert preset_problems(grid) == []


def test_guidance_methods_cross_the_grid_and_are_checked():
    from components.config import apply_overrides
    from components.config.grid import grid_cells
    from components.config.presets import get_preset
    from components.config.validation import preset_problems

    cells = grid_cells(["ddim10"], [0, 2], ["all", "0.3:5"], ["classifier", "cfg", "both"])
    assert [c.key for c in cells] == ["ddim10/scale_0", "ddim10/scale_2", "ddim10/scale_2_sigma_0.3-5",
                                      "ddim10/cfg_scale_2", "ddim10/cfg_scale_2_sigma_0.3-5", "ddim10/both_scale_2",
                                      "ddim10/both_scale_2_sigma_0.3-5"]
    assert [(c.classifier_scale, c.cfg_scale) for c in cells[1::2]] == [(2, 0), (0, 2), (2, 2)]
    smoke = get_preset("smoke")
    problems = preset_problems(apply_overrides(smoke, ["sample.guidance_methods=classifier,cfg,guided"]))
    assert any("guidance method 'guided' is unknown" in p for p in problems)
    assert any("classifier-free guidance (cfg/both), which needs a diffusion model trained with label dropout" in p
               for p in problems)
    ok = apply_overrides(smoke, ["sample.guidance_methods=cfg", "train_diffusion.label_dropout=0.1"])
    assert preset_problems(ok) == []
    assert any("evaluate.champion_method='both' is not in" in p
               for p in preset_problems(apply_overrides(ok, ["evaluate.champion_method=both"])))
