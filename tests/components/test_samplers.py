"""Sampler strings: the one parser (components.samplers.parse_sampler), its errors, and the network evaluations
each string costs."""

import pytest

from components.config import ConfigError
from components.samplers import SampleCost, parse_sampler


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
