"""The benchmarks under bench/ keep working as the product changes: each imports, and the side-by-side training
benchmark's network (built from the released flags) takes a released-layout state dict. No timing is asserted."""

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("bench_*.py"))


@pytest.fixture(autouse=True, scope="module")
def bench_on_path():
    sys.path.insert(0, str(BENCH))  # the scripts import each other as they do when run from bench/
    yield
    sys.path.remove(str(BENCH))


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_script_imports(name):
    module = importlib.import_module(name)
    assert callable(module.main)


def test_vs_released_learner_takes_the_released_layout():
    """bench_vs_released loads the released network's weights into ours strictly. Our UNet built from the same flags
    has the released checkpoint layout (tests/components/test_golden_networks.py), so its state dict stands in for
    the released one here; a class-conditional network with an extra null-class row (label dropout) would not load."""
    from components import build_unet
    from components.config.flags import unet_config_from_flags

    vs = importlib.import_module("bench_vs_released")
    released_layout = build_unet(unet_config_from_flags(vs.FLAGS, num_classes=vs.NUM_CLASSES)).state_dict()
    assert released_layout["label_emb.weight"].shape[0] == vs.NUM_CLASSES
    learner = vs.our_learner(torch.device("cpu"), 2, released_layout)
    for name, value in learner.net.state_dict().items():
        assert torch.equal(value.float(), released_layout[name].float()), name


def test_the_mutant_table_matches_the_code():
    """scripts/mutants.py's table (issues 18 and 40): every planted bug's snippet occurs once in its file and the
    mutated file compiles, so a refactor that moves a snippet fails here, not hours later in a mutation run."""
    spec = importlib.util.spec_from_file_location("mutants", BENCH.parent / "scripts" / "mutants.py")
    mutants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutants)
    assert sum(m.id.startswith("wiring.") for m in mutants.MUTANTS) >= 10
    mutants.check_table(BENCH.parent, mutants.MUTANTS)  # SystemExit naming the stale entries otherwise
