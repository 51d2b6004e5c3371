"""Sample-quality metrics as the paper's released evaluator computes them (Dhariwal & Nichol 2021, Sec. 2.3, App. F).

* FID / sFID: Frechet distance between Gaussians fitted to two feature sets (pool3 features for FID, the first 7
  channels of Inception mixed_6/conv flattened for sFID).
* Precision / recall (Kynkaanniemi et al. 2019): k-NN manifolds on squared Euclidean distances, k = 3. A point's ball
  radius is the distance to its k-th nearest neighbour other than itself; precision is the share of samples inside some
  reference ball, recall the share of references inside some sample ball.
* Inception-style score: exp(E_x KL(p(y|x) || p(y))), averaged over splits.
* KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets as torch-fidelity reports it (mean and standard deviation).
  Unlike FID it has no bias that depends on the number of samples, so cells of different sizes compare.

Pure NumPy on arrays of features; distances are computed in row blocks so 50k x 10k sets fit in memory.
"""

import warnings

import numpy as np
import scipy.linalg

K_NEAREST = 3
BLOCK_ROWS = 2048
KID_WHOLE_KERNEL_ENTRIES = 2 ** 24  # whole KID kernel matrices up to 128 MiB of float64 (about 2300 + 2300 points)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of [N, D] features (float64)."""
    features = _as_features(features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _as_features(features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
    return features


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # a singular product is handled by the caller's retry
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """Tr((sigma1 sigma2)^(1/2)) as the released evaluator computes it: the general matrix square root of the
    product, retried with eps on the diagonals when not finite; imaginary parts above 1e-3 are an error."""
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            largest = np.max(np.abs(covmean.imag))
            raise ValueError(f"matrix square root has an imaginary component {largest:.3g} (> 1e-3): the feature "
                             "covariances are too ill-conditioned; use more samples")
        covmean = covmean.real
    return float(np.trace(covmean))


def trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """The same trace through symmetric eigendecompositions: sigma1 sigma2 is similar to the PSD matrix
    sigma1^(1/2) sigma2 sigma1^(1/2), so the trace is the sum of the square roots of its eigenvalues.
    About 10x faster than the general square root for 2048-d features; equal to it within float64 rounding."""
    root1 = covariance_root(sigma1)
    inner = root1 @ sigma2 @ root1
    return _trace_sqrt_psd(inner)


def covariance_root(sigma: np.ndarray) -> np.ndarray:
    """sigma^(1/2) of a symmetric PSD covariance, through its eigendecomposition."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_psd(a: np.ndarray) -> float:
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((a + a.T) / 2), 0, None)).sum())


def frechet_distance_to_reference(features: np.ndarray, mu_ref, sigma_ref, root_ref) -> float:
    """FID of [N, D] sample features to reference statistics whose covariance root sigma_ref^(1/2) is already known
    (computed once per reference, not once per guidance scale). With X the centred features, the trace term's
    sigma_ref^(1/2) sigma sigma_ref^(1/2) = M^T M for M = X sigma_ref^(1/2) / sqrt(N - 1), whose nonzero eigenvalues
    are those of the N x N matrix M M^T: one small symmetric eigenproblem when N < D, the same value as "eigh".
    Tr(sigma) is the centred features' squared norm / (N - 1): the D x D sample covariance is never formed."""
    features = _as_features(features)
    mu = features.mean(axis=0)
    centred = (features - mu) / np.sqrt(len(features) - 1)
    m = centred @ root_ref
    trace_sqrt = _trace_sqrt_psd(m @ m.T if len(m) < m.shape[1] else m.T @ m)
    diff = mu - np.asarray(mu_ref, dtype=np.float64)
    return float(diff.dot(diff) + np.sum(centred ** 2) + np.trace(sigma_ref) - 2 * trace_sqrt)


FID_METHODS = {"sqrtm": trace_sqrt_product, "eigh": trace_sqrt_product_eigh}


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "sqrtm") -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)); method "sqrtm" (as released) or "eigh"."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                         f"{sigma2.shape}; compute both sets with the same feature extractor")
    if method not in FID_METHODS:
        raise ValueError(f"FID method {method!r} is not one of {sorted(FID_METHODS)}")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * FID_METHODS[method](sigma1, sigma2))


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] squared Euclidean distances, clipped at 0 against rounding."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def manifold_radii(features: np.ndarray, k: int = K_NEAREST) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour other than itself."""
    if len(features) < k + 1:
        raise ValueError(f"{len(features)} points are too few for k={k} nearest neighbours; need at least {k + 1}")
    radii = np.empty(len(features))
    for start in range(0, len(features), BLOCK_ROWS):
        d = squared_distances(features[start:start + BLOCK_ROWS], features)
        radii[start:start + BLOCK_ROWS] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return radii


def inside_manifold(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean per point: within the ball of at least one centre."""
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), BLOCK_ROWS):
        d = squared_distances(points[start:start + BLOCK_ROWS], centres)
        inside[start:start + BLOCK_ROWS] = (d <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(ref_features: np.ndarray, sample_features: np.ndarray, k: int = K_NEAREST) -> tuple[float, float]:
    ref, samples = np.asarray(ref_features), np.asarray(sample_features)
    if ref.ndim != 2 or samples.ndim != 2 or ref.shape[1] != samples.shape[1]:
        raise ValueError(f"feature shapes {ref.shape} and {samples.shape} differ; compute both sets with the same "
                         "feature extractor")
    precision = inside_manifold(samples, ref, manifold_radii(ref, k)).mean()
    recall = inside_manifold(ref, samples, manifold_radii(samples, k)).mean()
    return float(precision), float(recall)


def inception_score(probs: np.ndarray, splits: int = 1) -> float:
    """exp(E KL(p(y|x) || p(y))) per split, averaged; probs are [N, classes] softmax outputs."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) < splits:
        raise ValueError(f"probs must be [N >= splits={splits}, classes], got shape {probs.shape}")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's kernel (a.b / d + 1)^3 between the rows of [n, d] and [m, d] features: [n, m], float64."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from the kernel matrices of two sets of sizes m and n (m != n allowed): the means of k over
    pairs i != j within each set (a point is never paired with itself, which is what removes the bias) minus twice
    the mean over all pairs across the sets."""
    m, n = len(k_xx), len(k_yy)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kid(features, reference, num_subsets: int = 100, subset_size: int | None = 1000, seed: int = 0
        ) -> tuple[float, float]:
    """Kernel Inception Distance of [N, D] features to [M, D] reference features: (mean, std) of the unbiased MMD^2
    over `num_subsets` pairs of random subsets, one from each set, each drawn without replacement.

    torch-fidelity's defaults and convention (100 subsets of 1000, population std over the subsets), except that a
    set smaller than `subset_size` does not raise: the subsets then have min(subset_size, N, M) points, so with 100
    samples and 400 references every subset holds all samples and 100 of the references.
    `subset_size=None` (with `num_subsets=1`): the unbiased estimate on the whole sets, sizes may differ; std 0.
    The subsets are drawn from np.random.default_rng(seed), so a result repeats; its expectation does not depend on
    the subsets (each subset's estimate is unbiased)."""
    x, y = _as_features(features), _as_features(reference)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature shapes {x.shape} and {y.shape} differ; compute both sets with the same "
                         "feature extractor")
    if subset_size is None:
        if num_subsets != 1:
            raise ValueError(f"subset_size=None uses the whole sets once; num_subsets must be 1, got {num_subsets}")
        return mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)), 0.0
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    size = min(subset_size, len(x), len(y))
    rng = np.random.default_rng(seed)
    subsets = [(rng.choice(len(x), size, replace=False), rng.choice(len(y), size, replace=False))
               for _ in range(num_subsets)]
    if len(x) ** 2 + len(y) ** 2 + len(x) * len(y) <= KID_WHOLE_KERNEL_ENTRIES:
        # small sets (a grid cell against a few hundred references): the whole kernel matrices once, then each subset
        # indexes them, instead of three matrix products per subset (20x faster for 100 subsets of 100 x 400 points)
        k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
        values = [mmd2_unbiased(k_xx[np.ix_(a, a)], k_yy[np.ix_(b, b)], k_xy[np.ix_(a, b)]) for a, b in subsets]
    else:
        values = [mmd2_unbiased(polynomial_kernel(x[a], x[a]), polynomial_kernel(y[b], y[b]),
                                polynomial_kernel(x[a], y[b])) for a, b in subsets]
    return float(np.mean(values)), float(np.std(values))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples whose most probable class is their target label."""
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())
