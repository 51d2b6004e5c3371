"""Intervals of one grid cell's metrics and paired differences between cells, by subsampling: the delete-d jackknife
of Shao & Wu (1989), drawn at random as in the subsampling bootstrap of Politis & Romano (1994).

What varies is the cell's N samples; the reference set is fixed (its statistics are computed once and cached). A
replicate draws r = round(0.7 N) of the N samples WITHOUT replacement and recomputes each metric against the same
reference. The delete-d jackknife estimates the metric's variance at N samples as r / (N - r) times the replicates'
variance (exact for a mean: a subsample mean's variance is s^2 (1/r - 1/N)), and the interval at level L is

    estimate +- z_{(1+L)/2} sqrt(r / (N - r)) sd(replicates),

meant to cover E[metric_N], the metric "at this sample size" averaged over redraws of the N samples: centred on the
full-set estimate, so FID's bias at r samples, larger than at N, does not enter (only the replicates' spread does).

Chosen by simulation (bench/RESULTS.md; tests/components/test_uncertainty_calibration.py checks the coverage):
* Not Efron's bootstrap: a resample with replacement holds ~0.63 N distinct points, so with N < D the covariance's
  rank collapses and FID's resamples sit far above the estimate with 2-3x its spread (N = 100, D = 256: centred
  intervals always covered, percentile and basic ones never); copies at distance 0 shrink recall's k-NN radii (too
  wide), counted once they make them too narrow. Subsamples have no duplicates: each is a genuine sample set.
* r = 0.7 N: half-samples made recall too narrow (coverage 0.81-0.83 at D = 256); 0.7 N matched every estimator's
  spread within about 10%.
* The normal interval rather than the replicates' scaled quantiles: subsample means of proportions are discrete and
  their quantiles lost coverage (accuracy 0.17 at N = 30: 0.81 against 0.89).

Limits: FID and KID intervals are somewhat conservative (coverage ~0.93 at level 0.9). Where the samples' distribution
nearly equals the reference's, KID is a degenerate U-statistic whose second-order part subsampling overstates: its
intervals are ~1.4x too wide, and paired KID differences of two cells of one distribution contained 0 in 0.97 of
redraws. A proportion with a handful of successes gets a too short interval, as any normal interval would. A
statistic keeps N x N (and M x N) matrices and a replicate costs an r x r eigvalsh: cells of up to a few thousand.

All metrics of a cell use one set of subsamples, and two cells of a grid share it: sample i of each cell comes from
the same seed and label, so a difference between cells is computed on the same indices in both (paired), which
removes the variation the two cells have in common. The replicates are vectorised: each statistic precomputes what
does not change between replicates (Gram, distance and kernel matrices of the cell's samples) and a replicate indexes
them. Usage (one Reference per reference set and one Subsamples per grid, reused for every cell):

    ref = Reference.of(ref_pool)               # Reference(mu_s, sigma_s) where only statistics are cached (sFID)
    sub = subsample(num_samples, replicates=200, seed=0)
    stats = {"fid": FrechetStatistic(pool, ref), "precision": precision_statistic(pool, ref),
             "recall": RecallStatistic(pool, ref), "kid": KIDStatistic(pool, ref),
             "score": ScoreStatistic(probs), "accuracy": accuracy_statistic(probs, labels)}
    cell = ResampledCell(stats, sub)           # the replicates, computed once
    cell.intervals(level=0.9)                  # {name: Interval}
    cell.differences(other_cell, level=0.9)    # {name: Difference}: paired, this cell minus the other
"""

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol

import numpy as np
import scipy.linalg
import scipy.stats

from components import metrics

SUBSAMPLE_FRACTION = 0.7  # r / N; chosen by the calibration simulation (module docstring)
CHUNK_ENTRIES = 2 ** 22  # bounds the [replicates, r, r] and [replicates, M, r] arrays built at once (32 MiB)


# --- intervals -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A metric's value on the cell's full sample set and its interval [lo, hi] at `level` (e.g. 0.9)."""

    estimate: float
    lo: float
    hi: float
    level: float

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def excludes(self, value: float = 0.0) -> bool:
        return not self.lo <= value <= self.hi


@dataclass(frozen=True)
class Difference(Interval):
    """metric(A) - metric(B) on the full sets (`estimate`, also `delta`) and its paired interval."""

    @property
    def delta(self) -> float:
        return self.estimate

    @property
    def resolved(self) -> bool:
        """The interval excludes 0: at this level, the two cells differ in this metric."""
        return self.excludes(0.0)


@dataclass(frozen=True)
class Subsamples:
    """[B, r] sample indices, each row r distinct samples of N."""

    indices: np.ndarray
    num_samples: int

    @property
    def scale(self) -> float:
        """sqrt(r / (N - r)): maps the spread of a statistic over subsamples of r to its standard error at N."""
        r = self.indices.shape[1]
        return float(np.sqrt(r / (self.num_samples - r)))


def subsample(num_samples: int, replicates: int = 200, seed: int = 0,
              fraction: float = SUBSAMPLE_FRACTION) -> Subsamples:
    """`replicates` subsets of round(fraction N) of the N samples, each drawn without replacement, from
    np.random.default_rng(seed). Pass the same Subsamples to every metric of a cell and to both cells of a pair."""
    if num_samples < 3 or replicates < 2 or not 0 < fraction < 1:
        raise ValueError(f"need num_samples >= 3, replicates >= 2 and 0 < fraction < 1; got {num_samples}, "
                         f"{replicates}, {fraction}")
    size = min(num_samples - 1, max(2, round(fraction * num_samples)))
    keys = np.random.default_rng(seed).random((replicates, num_samples))
    return Subsamples(np.argsort(keys, axis=1)[:, :size], num_samples)  # a random permutation per row, cut at r


def interval_from(estimate: float, replicates: np.ndarray, scale: float, level: float = 0.9) -> Interval:
    """The normal interval at `level` around a statistic's full-set `estimate`, of standard error `scale` times the
    standard deviation of its subsample `replicates` (scale: Subsamples.scale)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    replicates = np.asarray(replicates, dtype=np.float64)
    half = scipy.stats.norm.ppf((1 + level) / 2) * scale * replicates.std(ddof=1)
    return Interval(float(estimate), float(estimate - half), float(estimate + half), level)


def samples_to_resolve(width: float, num_samples: int, delta: float, level: float = 0.9, power: float = 0.5) -> int:
    """About how many samples per cell resolve a difference `delta` at `level`, from an interval of `width` at
    `num_samples` samples: widths shrink like 1/sqrt(N). With power 0.5 the half-width just reaches |delta|,
    N (width / (2 |delta|))^2, and a true difference of delta is resolved about half the time; power p asks that it
    be resolved with probability p (normal approximation). Assumes delta itself does not change with N, which for
    FID, biased with N, holds only roughly."""
    if width < 0 or num_samples < 1 or delta == 0 or not 0 < power < 1 or not 0 < level < 1:
        raise ValueError(f"need width >= 0, num_samples >= 1, delta != 0, 0 < power < 1 and 0 < level < 1; got "
                         f"{width}, {num_samples}, {delta}, {power}, {level}")
    z_level = scipy.stats.norm.ppf((1 + level) / 2)
    half_width = width / 2 * (z_level + scipy.stats.norm.ppf(power)) / z_level
    return max(1, int(np.ceil(num_samples * (half_width / abs(delta)) ** 2)))


class Statistic(Protocol):
    """A metric of one cell prepared for subsampling: `estimate` on the cell's N samples, `replicates(indices)` the
    metric of each row of [B, r] distinct sample indices, everything else fixed."""

    num_samples: int
    estimate: float

    def replicates(self, indices: np.ndarray) -> np.ndarray: ...


def _difference(delta: float, replicates: np.ndarray, sub: Subsamples, level: float) -> Difference:
    got = interval_from(delta, replicates, sub.scale, level)
    return Difference(got.estimate, got.lo, got.hi, got.level)


class ResampledCell:
    """One cell's statistics ({name: Statistic}) and their replicates on `sub`, computed once: the intervals of the
    cell, and the paired differences with any other cell resampled on the same subsamples, index the stored
    replicates (a difference costs nothing more). Build one Subsamples per grid and pass it to every cell."""

    def __init__(self, statistics: dict, sub: Subsamples):
        _common_size([*statistics.values(), sub])
        self.statistics, self.sub = statistics, sub
        self.replicates = {name: s.replicates(sub.indices) for name, s in statistics.items()}

    def intervals(self, level: float = 0.9) -> dict:
        """{name: Interval}."""
        return {name: interval_from(s.estimate, self.replicates[name], self.sub.scale, level)
                for name, s in self.statistics.items()}

    def differences(self, other: "ResampledCell", level: float = 0.9) -> dict:
        """{name: Difference} of this cell minus `other`, for the metrics both cells have."""
        if other.sub is not self.sub and not np.array_equal(other.sub.indices, self.sub.indices):
            raise ValueError("paired differences need both cells resampled on the same subsamples")
        return {name: _difference(s.estimate - other.statistics[name].estimate,
                                  self.replicates[name] - other.replicates[name], self.sub, level)
                for name, s in self.statistics.items() if name in other.statistics}


def _common_size(statistics) -> int:
    sizes = {s.num_samples for s in statistics}
    if len(sizes) != 1:
        raise ValueError(f"statistics of sample sets of different sizes ({sorted(sizes)}) cannot share subsamples; "
                         "a paired comparison needs cells of the same seeds and labels")
    return sizes.pop()


def _chunks(replicates: int, entries_per_replicate: int):
    """Row slices of the replicates such that a [chunk, ...] array stays under CHUNK_ENTRIES."""
    step = max(1, CHUNK_ENTRIES // max(1, entries_per_replicate))
    return [slice(start, start + step) for start in range(0, replicates, step)]


def _submatrices(matrix: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """[B, r, r]: matrix[i][:, i] for each row i of [B, r] indices."""
    return matrix[indices[:, :, None], indices[:, None, :]]


# --- the statistics ------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Reference:
    """The fixed reference of one feature set: its mean and covariance, and its [M, D] features where precision,
    recall and KID need them (sFID needs only the statistics). What the metrics derive from it (the covariance root,
    the k-NN radii, KID's within-reference kernel mean) is computed on first use and kept: build one per reference."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    root: np.ndarray | None = None  # sigma^(1/2) where already known (the evaluation stage computes it once)
    k: int = metrics.K_NEAREST

    @classmethod
    def of(cls, features, k: int = metrics.K_NEAREST) -> "Reference":
        features = metrics._as_features(features)
        return cls(*metrics.feature_statistics(features), features=features, k=k)

    def covariance_root(self) -> np.ndarray:
        if self.root is None:
            self.root = metrics.covariance_root(self.sigma)
        return self.root

    @cached_property
    def radii(self) -> np.ndarray:
        return metrics.manifold_radii(self.needs_features("precision"), self.k)

    @cached_property
    def kid_within(self) -> float:
        """KID's kernel averaged over pairs of distinct references (a reference is never paired with itself)."""
        y = self.needs_features("KID")
        kernel = metrics.polynomial_kernel(y, y)
        return float((kernel.sum() - np.trace(kernel)) / (len(y) * (len(y) - 1)))

    def needs_features(self, what: str) -> np.ndarray:
        if self.features is None:
            raise ValueError(f"{what} needs the reference's features; this Reference holds only mu and sigma")
        return self.features


def _cell_features(features, reference: Reference) -> np.ndarray:
    x = metrics._as_features(features)
    if x.shape[1] != len(reference.mu):
        raise ValueError(f"features are {x.shape[1]}-d but the reference is {len(reference.mu)}-d; compute both sets "
                         "with the same feature extractor")
    return x


class MeanStatistic:
    """A metric that is the mean of a fixed per-sample value: precision (the sample lies inside the reference
    manifold, whose radii do not depend on the samples) and accuracy (argmax is the target label)."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)
        self.num_samples = len(self.values)
        self.estimate = float(self.values.mean())

    def replicates(self, indices: np.ndarray) -> np.ndarray:
        return self.values[indices].mean(axis=1)


def precision_statistic(features, reference: Reference) -> MeanStatistic:
    x = _cell_features(features, reference)
    return MeanStatistic(metrics.inside_manifold(x, reference.needs_features("precision"), reference.radii))


def accuracy_statistic(probs, labels) -> MeanStatistic:
    return MeanStatistic(np.asarray(probs).argmax(axis=1) == np.asarray(labels))


class FrechetStatistic:
    """FID (sFID, the evaluator's FID) of the cell's [N, D] features to the reference's mu and sigma.

    As metrics.frechet_distance_to_reference: with Y = Xc sigma_ref^(1/2) (Xc the features centred), the trace
    term's eigenvalues for a subsample s of r < D samples are those of the r x r matrix H G[s, s] H / (r - 1),
    G = Y Y^T, H the centring matrix; the mean term and Tr(sigma) come from R = Xc Xc^T. G and R are computed once
    per cell, so a replicate is one small eigvalsh and never touches a D x D matrix unless r > D (then the D x D one
    is the smaller). The centring's zero eigenvalue is projected out (Q^T G Q, Q an orthonormal basis orthogonal to
    the ones vector): a structural zero comes out as +-1e-16 and its square root would add 1e-8 to the trace."""

    def __init__(self, features, reference: Reference):
        x = _cell_features(features, reference)
        self.num_samples = len(x)
        mu = x.mean(axis=0)
        centred = x - mu  # centred once so that the sums below do not cancel large means
        self._y = centred @ reference.covariance_root()
        self._gram, self._raw = self._y @ self._y.T, centred @ centred.T
        offset = mu - np.asarray(reference.mu, dtype=np.float64)
        self._cross, self._offset2 = centred @ offset, float(offset @ offset)
        self._trace_ref = float(np.trace(reference.sigma))
        self.estimate = float(self.replicates(np.arange(self.num_samples)[None])[0])

    def replicates(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty(len(indices))
        r = indices.shape[1]
        for rows in _chunks(len(indices), r * max(r, self._y.shape[1])):
            s = indices[rows]
            raw = _submatrices(self._raw, s)
            mean_sq = raw.sum(axis=(1, 2)) / r ** 2  # |subsample mean - full mean|^2
            mean_term = mean_sq + 2 * self._cross[s].mean(axis=1) + self._offset2
            trace_sigma = (np.einsum("bii->b", raw) - r * mean_sq) / (r - 1)
            out[rows] = mean_term + trace_sigma + self._trace_ref - 2 * self._trace_sqrt(s)
        return out

    def _trace_sqrt(self, s: np.ndarray) -> np.ndarray:
        r, d = s.shape[1], self._y.shape[1]
        if r <= d:
            basis = _centring_basis(r)
            inner = basis.T @ _submatrices(self._gram, s) @ basis
        else:
            y = self._y[s] - self._y[s].mean(axis=1, keepdims=True)
            inner = y.transpose(0, 2, 1) @ y
        eig = np.linalg.eigvalsh(inner / (r - 1))
        return np.sqrt(np.clip(eig, 0, None)).sum(axis=1)


@lru_cache(maxsize=8)
def _centring_basis(r: int) -> np.ndarray:
    """[r, r - 1] orthonormal columns orthogonal to the ones vector: Q Q^T = H = I - 11^T / r."""
    return scipy.linalg.null_space(np.ones((1, r)))


class RecallStatistic:
    """Recall: the share of references inside the ball of some sample, of radius the distance to its k-th nearest
    neighbour among the samples. The radii depend on which samples are in the subsample, so they are recomputed per
    replicate from sample-sample distances computed once, as are the reference-sample distances. A subsample has no
    duplicates, so a replicate equals metrics.precision_recall on features[indices] exactly."""

    def __init__(self, features, reference: Reference):
        x = _cell_features(features, reference)
        if len(x) < reference.k + 2:
            raise ValueError(f"{len(x)} samples are too few for k={reference.k} nearest neighbours in subsamples")
        self.num_samples, self.k = len(x), reference.k
        self._ref_to_samples = metrics.squared_distances(reference.needs_features("recall"), x)
        self._within = metrics.squared_distances(x, x)
        self.estimate = float(self.replicates(np.arange(self.num_samples)[None])[0])

    def replicates(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty(len(indices))
        r, m = indices.shape[1], len(self._ref_to_samples)
        if r < self.k + 1:
            raise ValueError(f"subsamples of {r} are too few for k={self.k} nearest neighbours")
        for rows in _chunks(len(indices), r * max(r, m)):
            s = indices[rows]
            radii = np.partition(_submatrices(self._within, s), self.k, axis=2)[..., self.k]  # [0] is the point
            inside = self._ref_to_samples[:, s].transpose(1, 0, 2) <= radii[:, None, :]  # [b, M, r]
            out[rows] = inside.any(axis=2).mean(axis=1)
        return out


class KIDStatistic:
    """KID on the whole sets (metrics.kid with subset_size=None): the unbiased MMD^2 of the cell's features and the
    reference's. The kernel matrix of the samples and each sample's mean kernel to the references are computed once;
    a replicate averages them over its subsample."""

    def __init__(self, features, reference: Reference):
        x = _cell_features(features, reference)
        self.num_samples = len(x)
        self._within = metrics.polynomial_kernel(x, x)
        np.fill_diagonal(self._within, 0.0)  # a sample is never paired with itself: what makes KID unbiased
        self._cross = metrics.polynomial_kernel(x, reference.needs_features("KID")).mean(axis=1)
        self._within_ref = reference.kid_within
        self.estimate = float(self.replicates(np.arange(self.num_samples)[None])[0])

    def replicates(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty(len(indices))
        r = indices.shape[1]
        for rows in _chunks(len(indices), r * r):
            s = indices[rows]
            within = _submatrices(self._within, s).sum(axis=(1, 2)) / (r * (r - 1))
            out[rows] = within + self._within_ref - 2 * self._cross[s].mean(axis=1)
        return out


class ScoreStatistic:
    """The Inception-style score exp(E KL(p(y|x) || p(y))) of [N, classes] softmax outputs in `splits` parts, as
    metrics.inception_score (a subsample is split by position as the score splits its input). With h_a = sum_y
    p log p of sample a, a part's score is exp(mean of h - sum_y p(y) log p(y)), p(y) the part's marginal."""

    def __init__(self, probs, splits: int = 1):
        self._probs = np.asarray(probs, dtype=np.float64)
        self.num_samples, self.splits = len(self._probs), splits
        self._plogp = (self._probs * np.log(np.clip(self._probs, 1e-12, None))).sum(axis=1)
        self.estimate = metrics.inception_score(self._probs, splits)

    def replicates(self, indices: np.ndarray) -> np.ndarray:
        scores = []
        for part in np.array_split(indices, self.splits, axis=1):
            marginal = self._probs[part].mean(axis=1)
            marginal_plogp = (marginal * np.log(np.clip(marginal, 1e-12, None))).sum(axis=1)
            scores.append(np.exp(self._plogp[part].mean(axis=1) - marginal_plogp))
        return np.mean(scores, axis=0)
