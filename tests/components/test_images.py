import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from components.images import (
    DataError,
    center_crop_arr,
    decode_png,
    encode_png,
    fit_to,
    make_shapes,
    parse_idx,
    to_model_input,
    to_uint8,
)


def test_shapes_are_byte_identical_for_a_seed():
    a, la, names = make_shapes(32, 16, 4, seed=3)
    b, lb, _ = make_shapes(32, 16, 4, seed=3)
    c, _, _ = make_shapes(32, 16, 4, seed=4)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert a.tobytes() != c.tobytes()
    assert len(names) == 4 and len({n.split()[0] for n in names}) == 4 and len({n.split()[1] for n in names}) == 4
    assert np.bincount(la).tolist() == [8, 8, 8, 8]


def test_png_round_trip_and_scaling():
    images, _, _ = make_shapes(4, 16, 4, seed=0)
    assert np.array_equal(decode_png(encode_png(images[0]), 3), images[0])
    grey = images[..., :1]
    assert np.array_equal(decode_png(encode_png(grey[1]), 1), grey[1])
    x = to_model_input(images)
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(to_uint8(torch.tensor([[[[-1.0, 1.0, 0.0]]]])).ravel(), [0, 255, 127])


def test_center_crop_follows_the_released_preprocessing():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    out = center_crop_arr(image, 64)
    assert out.shape == (64, 64, 3)
    # 300x500 -> BOX to 150x250 -> BOX to 75x125 (while short side >= 128) -> BICUBIC to 64x107 -> centre crop
    halved = image.resize((250, 150), resample=Image.BOX).resize((125, 75), resample=Image.BOX)
    resized = np.asarray(halved.resize((107, 64), resample=Image.BICUBIC))
    assert np.array_equal(out, resized[:, 21:85])


def test_fit_to_pads_centred():
    images = np.full((2, 28, 28), 200, dtype=np.uint8)
    out = fit_to(images, 32, "pad")
    assert out.shape == (2, 32, 32, 1) and out[0, 2, 2, 0] == 200 and out[0, 1, 1, 0] == 0
    assert fit_to(images, 32, "resize").shape == (2, 32, 32, 1)


def _idx(magic: int, dims: list[int], body: bytes) -> bytes:
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return gzip.compress(head + body)


def test_idx_magic_and_truncation_are_named():
    ok = parse_idx(_idx(2049, [3], bytes([1, 2, 3])), "labels", "l.gz")
    assert ok.tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="magic number 2049"):
        parse_idx(_idx(2049, [3], bytes(3)), "images", "x.gz")
    with pytest.raises(DataError, match="truncated"):
        parse_idx(_idx(2051, [2, 28, 28], bytes(100)), "images", "x.gz")


def test_model_input_is_the_released_scaling(golden):
    """x0 of the golden files is the released loader's arr / 127.5 - 1 of x0_uint8: 0 -> -1 and 255 -> +1 exactly."""
    z = golden.npz("grey16_diffusion")
    x = to_model_input(z["x0_uint8"].transpose(0, 2, 3, 1))  # the golden uint8 images are NCHW
    assert torch.allclose(x, torch.from_numpy(z["x0"]), rtol=0, atol=1e-7)
    assert x.min() == -1 and x.max() == 1
