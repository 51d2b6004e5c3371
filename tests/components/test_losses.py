import torch

from components import build_unet
from components.config import DiffusionConfig, UNetConfig
from components.diffusion import create_diffusion
from components.losses import discretized_gaussian_log_likelihood, normal_kl, training_losses


def test_normal_kl_closed_form():
    assert torch.equal(normal_kl(torch.tensor(0.3), torch.tensor(0.1), torch.tensor(0.3), torch.tensor(0.1)),
                       torch.tensor(0.0))
    kl = normal_kl(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0), torch.tensor(0.0))
    assert torch.isclose(kl, torch.tensor(0.5))


def test_discretized_likelihood_sums_to_one_over_bins():
    bins = torch.linspace(-1, 1, 256)
    logp = discretized_gaussian_log_likelihood(bins, torch.zeros(256), torch.full((256,), -1.0))
    assert torch.isclose(logp.exp().sum(), torch.tensor(1.0), atol=1e-3)


def test_hybrid_loss_is_per_example_and_vb_does_not_train_the_mean():
    torch.manual_seed(0)
    net = build_unet(UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), attention_resolutions=(),
                                num_classes=None))
    for p in net.parameters():
        p.data.normal_(0, 0.02)
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
