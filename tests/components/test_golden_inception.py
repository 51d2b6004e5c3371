"""Inception features against the released evaluator's convention (shared/golden/README.md, item 6): TF1's legacy
bilinear resize to 299 (no half-pixel centres), (x - 128) / 128, pool3 and the first 7 channels of mixed_6/conv."""

import numpy as np
import pytest
import torch
from golden import assert_close, t_

from components.features import (
    INCEPTION_SIZE,
    FeatureError,
    InceptionFeatures,
    default_inception_path,
    tf1_bilinear_resize,
)

IMAGES = ("grey16", "rgb32")


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures()


def tf1_resize_reference(image: np.ndarray, size: int) -> np.ndarray:
    """TF1 resize_bilinear with align_corners=False, written from its definition in float64: output j reads input
    coordinate j * in / out, between floor and floor + 1 (the last index repeated at the border)."""

    def weights(n_in):
        src = np.arange(size) * n_in / size
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, wr = weights(image.shape[0])
    c0, c1, wc = weights(image.shape[1])
    rows = image[r0] * (1 - wr)[:, None] + image[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc)[None] + rows[:, c1] * wc[None]


def test_resize_is_tf1_legacy_bilinear(golden):
    z = golden.npz("inception")
    image = z["images_grey16"][:1].astype(np.float32)  # [1, 16, 16, 1]
    resized = tf1_bilinear_resize(t_(image).permute(0, 3, 1, 2), INCEPTION_SIZE)[0, 0]
    assert_close(resized, z["grey16.resized299_image0_channel0"], atol=1e-4, what="resized image")
    exact = tf1_resize_reference(image[0, :, :, 0].astype(np.float64), INCEPTION_SIZE)
    assert_close(resized.double(), exact, atol=1e-3, what="resize vs its definition")  # float32 of 0..255


@pytest.mark.parametrize("name", IMAGES)
def test_pool3_and_spatial_features(golden, inception, name):
    z = golden.npz("inception")
    feats = inception(z[f"images_{name}"])
    assert_close(torch.from_numpy(feats["pool"]), z[f"{name}.pool"], atol=1e-4, what=f"{name} pool3")
    assert_close(torch.from_numpy(feats["spatial"]), z[f"{name}.spatial"], atol=1e-4, what=f"{name} sFID spatial")
    # the other bilinear convention (half-pixel centres) is far off at this size: the check above can tell them apart
    assert np.abs(z[f"{name}.torch_halfpixel.pool"] - z[f"{name}.pool"]).max() > 0.5


def test_rebuilt_network_matches_the_archive(golden, inception):
    """The plain module (batch norm folded, one memory format) against the wheel's TorchScript forward itself."""
    archive = torch.jit.load(str(default_inception_path())).eval()
    images = golden.npz("inception")["images_rgb32"]
    with torch.inference_mode():
        x = inception.preprocess(images)
        expected = archive(x.contiguous())
        pool, _ = inception.net(x)
    assert_close(pool, expected, atol=1e-4, what="rebuilt pool3 vs the TorchScript archive")


def test_bf16_stays_near_fp32(golden, inception):
    """bf16 is an opt-in speed setting: close to fp32 (within a few percent), never mistaken for it."""
    images = golden.npz("inception")["images_rgb32"]
    fp32, bf16 = inception(images), InceptionFeatures(precision="bf16")(images)
    for part in ("pool", "spatial"):
        rel = np.linalg.norm(bf16[part] - fp32[part]) / np.linalg.norm(fp32[part])
        assert 0 < rel < 0.05, (part, rel)
    with pytest.raises(FeatureError, match="fp32"):
        InceptionFeatures(precision="fp16")


def test_bf16_keeps_the_first_convolution_in_fp32(golden, inception):
    """Rounding the resized image to bf16 was most of bf16's effect on FID and sFID (bench/RESULTS.md): the first
    convolution must see the float32 input and compute in float32, everything after it in bf16."""
    images = golden.npz("inception")["images_grey16"]
    bf16 = InceptionFeatures(precision="bf16")
    seen = {}
    bf16.net.stages[0].register_forward_hook(lambda m, args, out: seen.update(input=args[0], output=out.clone()))
    bf16(images)
    x = inception.preprocess(images)
    with torch.inference_mode():
        expected = inception.net.stages[0](x)
    assert seen["input"].dtype == torch.float32 and torch.equal(seen["input"], x)
    assert_close(seen["output"], expected, atol=1e-5, what="bf16 extractor's first convolution vs fp32")
    assert {p.dtype for p in bf16.net.stages[1:].parameters()} == {torch.bfloat16}
