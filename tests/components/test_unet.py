import pytest
import torch

from components import build_classifier, build_unet
from components.config import ClassifierConfig, UNetConfig
from components.nn import QKVAttention, set_attention_backend, timestep_embedding

SMALL = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,), num_classes=3,
                   num_head_channels=32)


def _randomize(net):
    torch.manual_seed(1)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    return net


def test_fresh_unet_outputs_zero_and_has_learned_sigma_channels():
    net = build_unet(SMALL)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([5, 500]), torch.tensor([0, 2]))
    assert out.shape == (2, 6, 16, 16)
    assert torch.count_nonzero(out) == 0
    for name, p in net.named_parameters():
        if ".proj_out." in name or ".out_layers.3." in name or name.startswith("out.2."):
            assert torch.count_nonzero(p) == 0, name


def test_class_embedding_changes_output_and_y_is_required():
    net = _randomize(build_unet(SMALL)).eval()
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([100])
    assert not torch.allclose(net(x, t, torch.tensor([0])), net(x, t, torch.tensor([1])))
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, t)


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 7]), 6)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(3) / 3)
    assert torch.allclose(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))


@pytest.mark.parametrize("new_order", [False, True])
def test_sdpa_equals_einsum_attention(new_order):
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    attn = QKVAttention(4, new_order)
    a = attn(qkv)
    attn.backend = "einsum"
    assert torch.allclose(a, attn(qkv), atol=1e-5)


def test_attention_orders_differ_and_match_manual_layout():
    heads, ch, length = 2, 4, 5
    qkv = torch.randn(1, 3 * heads * ch, length)
    legacy = QKVAttention(heads, new_order=False)(qkv)
    q, k, v = qkv.reshape(heads, 3, ch, length).unbind(1)  # legacy: per head [q, k, v]
    w = torch.softmax(torch.einsum("hct,hcs->hts", q, k) / ch**0.5, dim=-1)
    assert torch.allclose(legacy, torch.einsum("hts,hcs->hct", w, v).reshape(1, -1, length), atol=1e-5)
    new = QKVAttention(heads, new_order=True)(qkv)
    q, k, v = qkv.reshape(3, heads, ch, length).unbind(0)  # new: [q, k, v], each split in heads
    w = torch.softmax(torch.einsum("hct,hcs->hts", q, k) / ch**0.5, dim=-1)
    assert torch.allclose(new, torch.einsum("hts,hcs->hct", w, v).reshape(1, -1, length), atol=1e-5)
    assert not torch.allclose(legacy, new)


def test_whole_network_sdpa_equals_einsum():
    net = _randomize(build_unet(SMALL)).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 900]), torch.tensor([1, 2])
    a = net(x, t, y)
    b = set_attention_backend(net, "einsum")(x, t, y)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("pool", ["attention", "adaptive"])
def test_classifier_pools(pool):
    cfg = ClassifierConfig(image_size=16, model_channels=32, depth=1, channel_mult=(1, 2), attention_resolutions=(8,),
                           num_head_channels=32, num_classes=5, pool=pool)
    clf = build_classifier(cfg)
    logits = clf(torch.randn(3, 3, 16, 16), torch.tensor([0, 10, 999]))
    assert logits.shape == (3, 5)


def test_classifier_shares_the_unet_encoder_code():
    unet = build_unet(SMALL)
    clf = build_classifier(ClassifierConfig(image_size=16, model_channels=32, depth=2, channel_mult=(1, 2),
                                            attention_resolutions=(8,), num_head_channels=32, num_classes=3))
    assert [type(m) for m in unet.input_blocks.modules()] == [type(m) for m in clf.input_blocks.modules()]


def test_without_resblock_updown_uses_conv_resampling():
    net = build_unet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(),
                                num_classes=None, resblock_updown=False, learn_sigma=False))
    keys = net.state_dict().keys()
    assert "input_blocks.3.0.op.weight" in keys and "output_blocks.2.1.conv.weight" in keys
    assert net(torch.randn(1, 3, 16, 16), torch.tensor([1])).shape == (1, 3, 16, 16)


def _resblock_reference(block, x, emb, scale_shift: bool):
    """The released ResBlock written out in functional ops: in_layers = norm, SiLU, conv; the embedding projection is
    added to h (or, with scale-shift norm, modulates the second norm as norm(h) * (1 + scale) + shift); then SiLU,
    conv, plus the (1x1 conv) skip."""
    F = torch.nn.functional

    def norm(h, gn):
        return F.group_norm(h, 32, gn.weight, gn.bias, 1e-5)

    n1, c1, n2, c2 = block.in_layers[0], block.in_layers[2], block.out_layers[0], block.out_layers[3]
    h = F.conv2d(F.silu(norm(x, n1)), c1.weight, c1.bias, padding=1)
    e = F.linear(F.silu(emb), block.emb_layers[1].weight, block.emb_layers[1].bias)[:, :, None, None]
    if scale_shift:
        scale, shift = e.chunk(2, dim=1)
        h = norm(h, n2) * (1 + scale) + shift
    else:
        h = norm(h + e, n2)
    h = F.conv2d(F.silu(h), c2.weight, c2.bias, padding=1)
    skip = block.skip_connection
    return F.conv2d(x, skip.weight, skip.bias) + h


@pytest.mark.parametrize("scale_shift", [False, True])
def test_resblock_matches_its_definition(scale_shift):
    from components.unet import ResBlock

    block = _randomize(ResBlock(32, 16, 0.0, 64, use_scale_shift_norm=scale_shift)).eval()
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    with torch.no_grad():
        out = block(x, emb)
        assert torch.allclose(out, _resblock_reference(block, x, emb, scale_shift), atol=1e-5)
        assert not torch.allclose(out, block(x, emb * 0), atol=1e-3)  # the embedding matters
