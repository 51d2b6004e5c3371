from dataclasses import replace

import torch
from golden import t_

from components import build_unet
from components.config import DiffusionConfig, UNetConfig
from components.diffusion import create_diffusion
from components.losses import classifier_losses, discretized_gaussian_log_likelihood, normal_kl, training_losses


def test_normal_kl_closed_form():
    assert torch.equal(normal_kl(torch.tensor(0.3), torch.tensor(0.1), torch.tensor(0.3), torch.tensor(0.1)),
                       torch.tensor(0.0))
    kl = normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))
    assert torch.isclose(kl, torch.tensor(0.5))


def test_discretized_likelihood_sums_to_one_over_bins():
    bins = torch.linspace(-1, 1, 256)
    logp = discretized_gaussian_log_likelihood(bins, torch.zeros(256), torch.full((256,), -1.0))
    assert torch.isclose(logp.exp().sum(), torch.tensor(1.0), atol=1e-3)


def _small_unet():
    """An unconditional 8x8 UNet with every weight drawn from N(0, 0.02^2): no zero-initialised layer hides a term."""
    torch.manual_seed(0)
    net = build_unet(UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), attention_resolutions=(),
                                num_classes=None))
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    return net


def test_hybrid_loss_is_per_example_and_vb_does_not_train_the_mean():
    net = _small_unet()
    d = create_diffusion(DiffusionConfig(steps=100, learn_sigma=True))
    x0 = torch.rand(3, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 99])
    outputs = []

    def model(x, ts):
        out = net(x, ts)
        out.retain_grad()
        outputs.append(out)
        return out

    terms = training_losses(d, model, x0, t)
    assert terms["loss"].shape == (3,) and set(terms) == {"loss", "mse", "vb"}
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    terms["vb"].sum().backward()
    grad = outputs[0].grad
    assert torch.count_nonzero(grad[:, :3]) == 0 and torch.count_nonzero(grad[:, 3:]) > 0


def test_classifier_loss_is_cross_entropy_on_noised_x_t(golden):
    """The noisy classifier trains on x_t ~ q(x_t | x_0) at the original t: its logits on the released code's
    q_sample of the golden x_0, noise and t, with cross-entropy against the labels (and top-1 from the same logits)."""
    z, net = golden.npz("grey16_diffusion"), golden.net("grey16")
    d = create_diffusion(net.diffusion_config("linear"))
    x0, t, noise, y = t_(z["x0"]), t_(z["t"]), t_(z["noise"]), t_(z["y"])
    with torch.no_grad():
        terms = classifier_losses(d, net.classifier, x0, y, t, noise=noise)
        logits = net.classifier(t_(z["linear.q_sample"]), t)
    expected = -torch.log_softmax(logits, -1)[torch.arange(len(y)), y]
    assert torch.allclose(terms["loss"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(terms["top1"], (logits.argmax(-1) == y).float())
    higher = (logits > logits[torch.arange(len(y)), y][:, None]).sum(-1)  # classes ranked above the label
    assert torch.equal(terms["top5"], (higher < 5).float()) and 0 < terms["top5"].sum() < len(y)


def test_rescale_learned_sigmas_scales_vb_by_t_over_1000():
    """Released: with rescale_learned_sigmas the L_vlb term of the hybrid loss is multiplied by T / 1000."""
    net = _small_unet()
    cfg = DiffusionConfig(steps=100, learn_sigma=True)
    x0, t, noise = torch.rand(3, 3, 8, 8) * 2 - 1, torch.tensor([0, 10, 99]), torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        plain = training_losses(create_diffusion(cfg), net, x0, t, noise=noise)
        rescaled = training_losses(create_diffusion(replace(cfg, rescale_learned_sigmas=True)), net, x0, t, noise=noise)
    assert torch.allclose(rescaled["vb"], plain["vb"] * 0.1, rtol=1e-6)
    assert torch.allclose(rescaled["loss"], plain["mse"] + plain["vb"] * 0.1, rtol=1e-6)
