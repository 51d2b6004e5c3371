"""The UNet and the noisy classifier against openai/guided-diffusion's outputs on the same (perturbed) weights:
grey16 exercises ResBlock up/down and the new attention order, rgb32 conv up/down and the legacy order."""

import pytest
import torch
from golden import GOLDEN_NETS, assert_close, t_

from components.guidance import ClassifierGuidance


@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_unet_output(golden, name):
    io, net = golden.npz(f"{name}_network_io"), golden.net(name)
    with torch.no_grad():
        out = net.unet(t_(io["x"]), t_(io["t"]), t_(io["y"]))
    ref = io["unet_output"]
    assert_close(out, ref, atol=1e-5 * max(1.0, abs(ref).max()), what=f"{name} unet(x, t, y)")


@pytest.mark.parametrize("name", GOLDEN_NETS)
def test_classifier_logits_and_gradient(golden, name):
    io, net = golden.npz(f"{name}_network_io"), golden.net(name)
    x, t, y = t_(io["x"]), t_(io["t"]), t_(io["y"])
    with torch.no_grad():
        assert_close(net.classifier(x, t), io["classifier_logits"], atol=1e-5, what=f"{name} classifier logits")
    grad = ClassifierGuidance(net.classifier, 1.0)(x, t, y)
    ref = io["classifier_grad_log_prob"]
    assert_close(grad, ref, atol=1e-5 * abs(ref).max(), what=f"{name} d/dx log p(y | x, t)")
