import gzip
import os

import numpy as np
import pytest

from components import metrics
from components.features import FeatureError, InceptionFeatures, check_images
from components.images import parse_idx
from components.metrics import (
    covariance_root,
    feature_statistics,
    frechet_distance,
    frechet_distance_to_reference,
    inception_score,
    precision_recall,
)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(400, 12))
    mu, sigma = feature_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_fid_of_two_gaussians_matches_the_closed_form(method):
    d, a, b = 6, 2.0, 0.5
    shift = np.arange(d, dtype=float)
    got = frechet_distance(np.zeros(d), a * np.eye(d), shift, b * np.eye(d), method=method)
    assert got == pytest.approx(shift @ shift + d * (a + b - 2 * np.sqrt(a * b)), rel=1e-9)
    rng = np.random.default_rng(1)
    m = rng.normal(size=(d, d))
    sigma = m @ m.T + np.eye(d)  # same full covariance: only the means differ
    assert frechet_distance(np.ones(d), sigma, np.zeros(d), sigma, method=method) == pytest.approx(d, abs=1e-6)


@pytest.mark.parametrize("n", [30, 400])  # rank-deficient (n < d) and full-rank covariances
def test_fid_methods_agree(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, 64)), rng.normal(size=(n, 64)) * 1.3 + 0.2
    stats = (*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance(*stats, method="eigh") == pytest.approx(frechet_distance(*stats), rel=1e-6)
    # from the samples' features and the reference's covariance root (N x N eigenproblem when n < d)
    got = frechet_distance_to_reference(a, *stats[2:], covariance_root(stats[3]))
    assert got == pytest.approx(frechet_distance(*stats), rel=1e-6)


def test_fid_survives_singular_covariances_and_rejects_mismatched_dimensions():
    sigma = np.diag([1.0, 0.0, 0.0])
    assert np.isfinite(frechet_distance(np.zeros(3), sigma, np.zeros(3), sigma))
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def clusters(centres, per, rng, spread=0.1):
    return np.concatenate([c + spread * rng.normal(size=(per, len(c))) for c in centres])


def test_precision_recall_closed_cases():
    rng = np.random.default_rng(0)
    centres = 10 * np.eye(4)
    ref = clusters(centres, 50, rng)
    assert precision_recall(ref, ref) == (1.0, 1.0)
    assert precision_recall(ref, ref + 1000.0) == (0.0, 0.0)
    dropped = clusters(centres[:1], 50, rng)  # the samples cover one mode of four
    precision, recall = precision_recall(ref, dropped)
    assert precision > 0.9 and recall < 0.35


def test_precision_recall_blocked_equals_one_block(monkeypatch):
    rng = np.random.default_rng(3)
    ref, samples = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.5
    whole = precision_recall(ref, samples)
    monkeypatch.setattr(metrics, "BLOCK_ROWS", 37)
    assert precision_recall(ref, samples) == whole


def test_precision_recall_needs_k_plus_one_points():
    with pytest.raises(ValueError, match="too few"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_inception_score_bounds():
    constant = np.tile([0.1, 0.6, 0.3], (30, 1))
    assert inception_score(constant) == pytest.approx(1.0)
    confident = np.eye(5)[np.arange(50) % 5]
    assert inception_score(confident) == pytest.approx(5.0)
    assert inception_score(confident, splits=5) == pytest.approx(5.0)
    assert metrics.accuracy(confident, np.arange(50) % 5) == 1.0


def test_feature_input_errors_name_the_layout():
    with pytest.raises(FeatureError, match="uint8"):
        check_images(np.zeros((2, 8, 8, 3), np.float32), "samples")
    with pytest.raises(FeatureError, match="NHWC"):
        check_images(np.zeros((2, 3, 8, 8), np.uint8), "samples")
    with pytest.raises(FeatureError, match="pip install"):
        InceptionFeatures("/nonexistent/default_1.pt")


@pytest.mark.usefixtures("one_thread")  # 20 s instead of 82 s on two threads while other processes share the cores
def test_inception_features_put_uniform_noise_outside_fashion_mnist():
    raw = gzip.decompress(open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"), "rb").read())
    real = parse_idx(raw, "images", "t10k-images")[:48, :, :, None]
    noise = np.random.default_rng(0).integers(0, 256, size=(24, 28, 28, 1), dtype=np.uint8)
    extractor = InceptionFeatures()
    ref, fake = extractor(real[:24]), extractor(noise)
    other = extractor(real[24:])
    assert ref["pool"].shape == (24, 2048) and ref["spatial"].shape == (24, 17 * 17 * 7)
    precision_noise, recall_noise = precision_recall(ref["pool"], fake["pool"])
    precision_real, _ = precision_recall(ref["pool"], other["pool"])
    assert precision_noise < 0.05 and recall_noise < 0.05
    assert precision_real > 0.5
    mu_r, s_r = feature_statistics(ref["pool"])
    fid_noise = frechet_distance(mu_r, s_r, *feature_statistics(fake["pool"]), method="eigh")
    assert fid_noise > 2 * frechet_distance(mu_r, s_r, *feature_statistics(other["pool"]), method="eigh")


def test_precision_recall_by_hand():
    """1-D integer points, so every squared distance is exact and ties are real. With k = 3 the reference balls (radius
    = distance to the 3rd nearest other reference point, as the released evaluator) are 0: 3, 1: 2, 2: 2, 3: 3,
    10: 9, covering [-3, 19] with both ends inside (a point on a ball's boundary counts: <=). Of the samples, -3
    (on the ball of 0), 5 and 19 (on the ball of 10) are inside, 20 and 30 are not. The sample balls cover [-26, 55]."""
    ref = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    samples = np.array([[-3.0], [5.0], [19.0], [20.0], [30.0]])
    assert precision_recall(ref, samples) == (0.6, 1.0)
    assert precision_recall(samples, ref) == (1.0, 0.6)
    assert metrics.manifold_radii(ref).tolist() == [9.0, 4.0, 4.0, 9.0, 81.0]  # squared


def test_feature_statistics_closed_form():
    mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]]))
    assert mu.tolist() == [2.0, 2.0]
    assert np.allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])  # unbiased (1 / (N - 1)), as np.cov in the released evaluator


def test_inception_score_marginal_is_per_split():
    """Two splits, each confident in one class: within a split p(y|x) = p(y), so each split scores 1 (the released
    evaluator's per-split marginal); one marginal over both splits would give 2."""
    probs = np.eye(2)[[0, 0, 1, 1]]
    assert inception_score(probs, splits=2) == pytest.approx(1.0)
    assert inception_score(probs, splits=1) == pytest.approx(2.0)


def test_evaluator_features_are_the_classifier_at_t0():
    """The evaluator's features of clean images (t = 0, pixels x / 127.5 - 1): pool = its head's normalised
    features averaged over positions, probs = softmax of the head's 1x1 conv applied to that average."""
    import torch

    from components import build_classifier
    from components.config import ClassifierConfig
    from components.features import EvaluatorFeatures

    torch.manual_seed(0)
    net = build_classifier(ClassifierConfig(image_size=8, model_channels=32, depth=1, channel_mult=(1, 2),
                                            attention_resolutions=(), num_classes=3, pool="adaptive"))
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    feats = EvaluatorFeatures(net, image_size=8, in_channels=3)(images)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
    with torch.no_grad():
        h = {t: net.features(x, torch.full((4,), t)) for t in (0, 999)}
        pool = torch.nn.functional.silu(net.out[0](h[0])).mean(dim=(2, 3))  # [4, C]
        conv = net.out[3]
        probs = torch.softmax(pool @ conv.weight[:, :, 0, 0].T + conv.bias, -1)
    assert np.allclose(feats["pool"], pool.numpy(), atol=1e-6)
    assert np.allclose(feats["probs"], probs.numpy(), atol=1e-6)
    assert not torch.allclose(h[0], h[999], atol=1e-3)  # t matters: the checks above can tell t = 0 from others
