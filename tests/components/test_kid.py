"""KID (Binkowski et al. 2018) against its definition written out term by term, its subset convention
(torch-fidelity's), and its unbiasedness where FID is biased."""

import numpy as np
import pytest

from components import metrics
from components.metrics import feature_statistics, frechet_distance, kid


def kid_by_definition(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, as explicit sums over pairs."""
    d = x.shape[1]

    def k(a, b):
        return (sum(a[t] * b[t] for t in range(d)) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("m,n", [(9, 9), (7, 12)])
def test_kid_on_whole_sets_is_the_unbiased_mmd_of_its_definition(m, n):
    rng = np.random.default_rng(m + n)
    x, y = rng.normal(size=(m, 5)) + 0.4, rng.normal(size=(n, 5)) * 1.3
    value, std = kid(x, y, num_subsets=1, subset_size=None)
    assert value == pytest.approx(kid_by_definition(x, y), rel=1e-12)
    assert std == 0.0


def test_kid_subsets_are_drawn_without_replacement_from_the_seeded_generator():
    """Each subset: the samples' subset, then the reference's, from np.random.default_rng(seed); (mean, population
    std) of the subsets' estimates. The whole kernel matrices (small sets) and per-subset kernels agree."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(15, 4)), rng.normal(size=(11, 4)) + 0.3
    draws = np.random.default_rng(7)
    values = []
    for _ in range(4):
        a, b = draws.choice(15, 6, replace=False), draws.choice(11, 6, replace=False)
        values.append(kid_by_definition(x[a], y[b]))
    got = kid(x, y, num_subsets=4, subset_size=6, seed=7)
    assert got == pytest.approx((np.mean(values), np.std(values)), rel=1e-10)
    assert kid(x, y, num_subsets=4, subset_size=6, seed=8) != got
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "KID_WHOLE_KERNEL_ENTRIES", 0)
        assert kid(x, y, num_subsets=4, subset_size=6, seed=7) == pytest.approx(got, rel=1e-10)


def test_kid_subsets_shrink_to_the_smaller_set():
    """A set smaller than subset_size: subsets of min(subset_size, N, M). With 10 samples and 10 references every
    subset holds both whole sets, so each estimate is the whole-set one."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3)) + 0.5
    mean, std = kid(x, y, num_subsets=5, subset_size=1000)
    assert mean == pytest.approx(kid(x, y, 1, None)[0], rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    assert kid(x, y[:4], num_subsets=3, subset_size=1000)[1] > 0  # 4 of the 10 samples per subset: they differ


def test_kid_is_unbiased_where_fid_is_not():
    """Two samples of the same Gaussian: KID averages to 0 within 3 standard errors over redraws, FID stays far
    above 0 (its bias at 20 samples in 6 dimensions)."""
    rng = np.random.default_rng(2)
    kids, fids = [], []
    for _ in range(400):
        x, y = rng.normal(size=(20, 6)), rng.normal(size=(20, 6))
        kids.append(kid(x, y, 1, None)[0])
        fids.append(frechet_distance(*feature_statistics(x), *feature_statistics(y)))
    assert abs(np.mean(kids)) < 3 * np.std(kids) / np.sqrt(len(kids))
    assert np.mean(fids) > 10 * np.std(fids) / np.sqrt(len(fids)) and np.mean(fids) > 1.0


def test_kid_rejects_what_it_cannot_compute():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="same feature extractor"):
        kid(x, np.zeros((5, 4)))
    with pytest.raises(ValueError, match="num_subsets must be 1"):
        kid(x, x, num_subsets=10, subset_size=None)
