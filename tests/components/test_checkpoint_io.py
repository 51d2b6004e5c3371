import pickle

import pytest
import torch

from components import build_unet
from components.checkpoint import CheckpointError, ema_init_share, load_into, load_state_dict, save_weights, update_ema
from components.config import UNetConfig

CFG = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,), num_classes=3)


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    net = build_unet(CFG)
    for p in net.parameters():
        p.data.normal_()
    save_weights(net.state_dict(), tmp_path / "model.safetensors", config={"unet": "x"})
    assert (tmp_path / "model.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    other = load_into(build_unet(CFG), tmp_path / "model.safetensors")
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


def test_released_pt_loads_without_unpickling_code(tmp_path):
    net = build_unet(CFG)
    torch.save(net.state_dict(), tmp_path / "ok.pt")
    assert set(load_state_dict(tmp_path / "ok.pt")) == set(net.state_dict())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pt is not a plain state dict of tensors") as refused:
        load_state_dict(tmp_path / "evil.pt")
    assert "weights_only" not in str(refused.value)  # torch's own message suggests the unsafe weights_only=False


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_state_dict(tmp_path / "nope.safetensors")


def test_ema_update():
    ema, src = [torch.zeros(3)], [torch.ones(3)]
    update_ema(ema, src, 0.9)
    assert torch.allclose(ema[0], torch.full((3,), 0.1))


def test_ema_init_share_is_what_remains_of_the_initial_weights():
    ema, src = [torch.ones(4, dtype=torch.float64)], [torch.zeros(4, dtype=torch.float64)]
    for _ in range(450):
        update_ema(ema, src, 0.995)  # the initial weights are 1, every later value 0
    assert torch.allclose(ema[0], torch.full((4,), ema_init_share(0.995, 450), dtype=torch.float64))
    assert 0.10 < ema_init_share(0.995, 450) < 0.11 and ema_init_share(0.99, 450) < 0.011
