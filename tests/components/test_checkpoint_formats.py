"""Every released ADM checkpoint layout (diffusion UNets, upsamplers, classifiers) is reproduced key-for-key and
shape-for-shape."""

import json

import pytest
import torch

from components import classifier_from_flags, model_from_flags, superres_from_flags
from components.checkpoint import CheckpointError, load_into, matching_released_flags
from components.config.presets import RELEASED_FLAGS
from components.networks import from_released_flags

NAMES = sorted(RELEASED_FLAGS)


def _build(name, flags):
    with torch.device("meta"):
        return from_released_flags(name, flags)


@pytest.mark.parametrize("name", NAMES)
def test_manifest_matches_key_for_key(checkpoint_formats, name):
    manifest = json.loads((checkpoint_formats / f"{name}.json").read_text())
    net = _build(name, manifest["flags"])
    got = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert list(got) == list(manifest["state_dict"])
    assert got == manifest["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == manifest["num_params"]


@pytest.mark.parametrize("name", NAMES)
def test_pinned_flags_equal_the_manifests(checkpoint_formats, name):
    manifest = json.loads((checkpoint_formats / f"{name}.json").read_text())
    assert RELEASED_FLAGS[name] == manifest["flags"]


def test_wrong_checkpoint_names_keys_and_matching_flags(tmp_path):
    flags = dict(RELEASED_FLAGS["64x64_classifier"])
    with torch.device("meta"):
        released = classifier_from_flags(flags)
    state = {k: torch.empty(v.shape, device="meta") for k, v in released.state_dict().items()}
    assert matching_released_flags(state) == ["64x64_classifier"]
    with torch.device("meta"):
        wrong = classifier_from_flags({**flags, "classifier_depth": 2})
    with pytest.raises(CheckpointError) as err:
        load_into(wrong, state, source="64x64_classifier.pt")
    text = str(err.value)
    assert "unexpected keys" in text and "64x64_classifier" in text


def test_an_upsampler_checkpoint_is_named_when_it_does_not_fit():
    flags = RELEASED_FLAGS["128_512_upsampler"]
    with torch.device("meta"):
        released = superres_from_flags(flags)
        wrong = superres_from_flags({**flags, "attention_resolutions": "32"})  # a flag left at a wrong value
    state = {k: torch.empty(v.shape, device="meta") for k, v in released.state_dict().items()}
    assert matching_released_flags(state) == ["128_512_upsampler"]
    with pytest.raises(CheckpointError, match="matches the released flags of 128_512_upsampler"):
        load_into(wrong, state, source="128_512_upsampler.pt")


def test_small_custom_classifier_and_model():
    flags = {**RELEASED_FLAGS["64x64_classifier"], "image_size": 32, "classifier_width": 32, "classifier_depth": 1,
             "classifier_attention_resolutions": "8"}
    clf = classifier_from_flags(flags, num_classes=10, classifier_channel_mult="1,2,2", classifier_num_head_channels=32)
    assert clf(torch.randn(2, 3, 32, 32), torch.tensor([0, 999])).shape == (2, 10)
    model = model_from_flags({**RELEASED_FLAGS["64x64_diffusion"], "image_size": 32, "num_channels": 64,
                              "num_res_blocks": 1, "attention_resolutions": "16,8", "channel_mult": "1,2,2"},
                             num_classes=10)
    assert model(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]), torch.tensor([3, 4])).shape == (2, 6, 32, 32)
