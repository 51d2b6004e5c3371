"""Image data: decoding, the released preprocessing, and the three sources (Fashion-MNIST IDX, image folders, shapes).

Preprocessing follows the released ImageNet loader (guided_diffusion/image_datasets.py, ``center_crop_arr``): halve the
image with BOX filtering while its short side is at least twice the target, resize the short side to the target with
BICUBIC, then centre-crop. Images are stored as uint8 HWC; ``to_model_input`` scales them to [-1, 1] NCHW on read.
"""

import gzip
import hashlib
import io
import json

import numpy as np
import torch
from PIL import Image

from .config import UserError
from .config.sections import RESIZE_MODES


class DataError(UserError):
    """Bad input data; the message names the file or value and the fix."""


# --- decode / encode ------------------------------------------------------------------------------------------------
def encode_png(arr: np.ndarray) -> bytes:
    """uint8 HW (grey) or HWC (RGB) -> PNG bytes."""
    image = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """PNG bytes -> uint8 HWC with `channels` channels."""
    image = Image.open(io.BytesIO(data))
    arr = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return arr[..., None] if arr.ndim == 2 else arr


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8 NHWC, as the released sampler quantises: ((x + 1) * 127.5).clamp(0, 255)."""
    return ((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def downsample_area_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, size, size, C] with H and W multiples of size: each pixel the mean of its block,
    the area filter of the upsampler's training pairs (superres.downsample_area), rounded to the nearest level. A
    cascade's base model trains on these (ingest writes them beside the large images)."""
    n, h, w, c = images.shape
    if h % size or w % size:
        raise DataError(f"{h}x{w} images do not split into {size}x{size} whole blocks; pick a size that divides them")
    blocks = images.reshape(n, size, h // size, size, w // size, c).astype(np.float64).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.uint8)


# --- preprocessing ----------------------------------------------------------------------------------------------------
def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """The released ImageNet preprocessing: BOX halvings, BICUBIC resize of the short side, centre crop."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size]


def fit_to(images: np.ndarray, resolution: int, mode: str = "pad") -> np.ndarray:
    """uint8 NHW(C) small images -> NHWC at `resolution`: zero-pad centred ("pad") or resize ("resize")."""
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if (h, w) == (resolution, resolution):
        return images
    if mode == "pad":
        if h > resolution or w > resolution:
            raise DataError(f"cannot pad {h}x{w} images to {resolution}; use resize mode or a larger resolution")
        out = np.zeros((n, resolution, resolution, c), dtype=np.uint8)
        top, left = (resolution - h) // 2, (resolution - w) // 2
        out[:, top:top + h, left:left + w] = images
        return out
    if mode == "resize":
        return np.stack([
            _as_hwc(center_crop_arr(Image.fromarray(im[..., 0] if c == 1 else im), resolution)) for im in images
        ])
    raise DataError(f"resize mode {mode!r} is unknown; use one of {', '.join(RESIZE_MODES)}")


def _as_hwc(arr: np.ndarray) -> np.ndarray:
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_file(data: bytes, name: str, resolution: int, channels: int) -> np.ndarray:
    """Encoded image bytes (any format PIL reads) -> uint8 HWC at resolution. DataError names the file on failure."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = image.convert("L" if channels == 1 else "RGB")
    except Exception as e:  # PIL raises many types for corrupt, truncated or non-image files
        raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return _as_hwc(center_crop_arr(image, resolution))


# --- Fashion-MNIST ----------------------------------------------------------------------------------------------------
FASHION_MNIST_FILES = {
    # (split, kind): (file name, md5 of the decompressed contents)
    ("train", "images"): ("train-images-idx3-ubyte.gz", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
    ("train", "labels"): ("train-labels-idx1-ubyte.gz", "9018921c3c673c538a1fc5bad174d6f9"),
    ("test", "images"): ("t10k-images-idx3-ubyte.gz", "8181f5470baa50b63fa0f6fddb340f0a"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte.gz", "15d484375f8d13e6eb1aabb0c3f46965"),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IDX_MAGIC = {"images": 2051, "labels": 2049}


def parse_idx(raw: bytes, kind: str, name: str) -> np.ndarray:
    """Decompressed IDX bytes -> uint8 array ([N, 28, 28] images or [N] labels), checking the magic number."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 8:
        raise DataError(f"{name}: too short to be an IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise DataError(f"{name}: IDX magic number {magic}, expected {IDX_MAGIC[kind]} for {kind}; "
                        "is this the right file (images vs labels)?")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{name}: holds {body.size} values but its header says {dims}; the file is truncated")
    return body.reshape(dims)


def check_md5(raw: bytes, expected: str, name: str) -> None:
    got = hashlib.md5(raw).hexdigest()
    if got != expected:
        raise DataError(f"{name}: md5 of the decompressed contents is {got}, expected {expected}; "
                        "re-download the Fashion-MNIST files (Debian: apt-get install dataset-fashion-mnist)")


def decode_fashion_mnist(read_file) -> dict:
    """{split: (images uint8 [N, 28, 28], labels int64 [N])}; read_file(name) -> the file's (gzipped) bytes."""
    out = {}
    for split in ("train", "test"):
        arrays = {}
        for kind in ("images", "labels"):
            name, md5 = FASHION_MNIST_FILES[(split, kind)]
            raw = read_file(name)
            raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            arrays[kind] = parse_idx(raw, kind, name)
            check_md5(raw, md5, name)
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
        check_labels(labels, len(FASHION_MNIST_CLASSES), f"Fashion-MNIST {split} labels")
        out[split] = (images, labels)
    return out


def check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} labels outside 0..{num_classes - 1} (e.g. {int(labels[bad][0])})")


# --- synthetic shapes -------------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 200, 40)}


def shape_classes(num_classes: int) -> list[str]:
    colours = list(COLOURS)
    total = len(SHAPES) * len(colours)
    if not 2 <= num_classes <= total:
        raise DataError(f"shapes: num_classes={num_classes} must be between 2 and {total}")
    # class i: shape i mod 4, colour shifted every 4 classes, so the first classes differ in shape and colour
    return [f"{colours[(i + i // len(SHAPES)) % len(colours)]} {SHAPES[i % len(SHAPES)]}" for i in range(num_classes)]


def _shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))


def make_shapes(num_images: int, resolution: int, num_classes: int, seed: int):
    """Seed-deterministic coloured shapes on a grey background: (uint8 [N, R, R, 3], labels int64, class names)."""
    names = shape_classes(num_classes)
    rng = np.random.default_rng(seed)
    labels = np.arange(num_images, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    images = np.empty((num_images, resolution, resolution, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        colour_name, shape = names[label].split(" ")
        background = rng.integers(90, 140)
        r = resolution * rng.uniform(0.22, 0.34)
        cy, cx = rng.uniform(r, resolution - r, size=2)
        image = np.full((resolution, resolution, 3), background, dtype=np.int16)
        colour = np.array(COLOURS[colour_name]) + rng.integers(-15, 16, size=3)
        image[_shape_mask(shape, resolution, cy, cx, r)] = colour
        images[i] = np.clip(image + rng.integers(-6, 7, size=image.shape), 0, 255).astype(np.uint8)
    return images, labels, names


# --- the held-out split -----------------------------------------------------------------------------------------------
def validation_mask(images: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """bool [N]: which images go to the held-out `validation` split. Decided by each image's own content (a hash of
    its pixels and label), not by its position, so a rerun, another shard size or a source that grew puts every image
    where it was before, and duplicates of one image never straddle train and validation."""
    keys = np.empty(len(labels), dtype=np.float64)
    for i, (image, label) in enumerate(zip(images, labels)):
        digest = hashlib.blake2b(np.ascontiguousarray(image).tobytes() + int(label).to_bytes(8, "little"),
                                 digest_size=8).digest()
        keys[i] = int.from_bytes(digest, "little") / 2.0**64  # uniform in [0, 1)
    return keys < fraction


# --- fingerprint ------------------------------------------------------------------------------------------------------
class Fingerprint:
    """sha256 over the class names, then each split's uint8 pixels (with shape) and labels, in order."""

    def __init__(self, class_names: list[str]):
        self._h = hashlib.sha256(json.dumps(list(class_names)).encode())

    def update(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        self._h.update(f"{split}:{images.shape}".encode())
        self._h.update(np.ascontiguousarray(images).tobytes())
        self._h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [rows * cols, H, W, C] -> one uint8 image [rows * H, cols * W, C] (row-major)."""
    n, h, w, c = images.shape
    cols = max(1, n // rows)
    return images[: rows * cols].reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def class_grid(images: np.ndarray, labels: np.ndarray, max_classes: int = 10, per_class: int = 8) -> np.ndarray:
    """uint8 grid: one row per class present (up to max_classes), up to per_class samples each, zero-padded."""
    rows = []
    for c in sorted(set(labels.tolist()))[:max_classes]:
        picked = images[labels == c][:per_class]
        pad = np.zeros((per_class - len(picked), *images.shape[1:]), dtype=np.uint8)
        rows.append(np.concatenate([picked, pad]))
    return image_grid(np.concatenate(rows), rows=len(rows))
