"""Each replicate of components.uncertainty equals the metric of components.metrics computed directly on the
subsample's features; the interval, subsample and sample-size arithmetic against closed forms. Coverage by
simulation: test_uncertainty_calibration.py."""

import numpy as np
import pytest

from components import metrics, uncertainty
from components.uncertainty import (
    Difference,
    FrechetStatistic,
    KIDStatistic,
    RecallStatistic,
    Reference,
    ResampledCell,
    ScoreStatistic,
    accuracy_statistic,
    interval_from,
    precision_statistic,
    samples_to_resolve,
    subsample,
)


def features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ (np.eye(d) + 0.2 * rng.normal(size=(d, d))) + shift


@pytest.fixture(scope="module")
def cell():
    """40 samples, 24-d (N > D: the released sqrtm FID is accurate there), against 90 references."""
    ref = features(90, 24, 0)
    return features(40, 24, 1, shift=0.3), ref, Reference.of(ref), subsample(40, 6, seed=3).indices


def test_subsamples_are_distinct_seeded_and_scaled():
    sub = subsample(50, 30, seed=4)
    assert sub.indices.shape == (30, 35)  # round(0.7 * 50)
    assert all(len(np.unique(row)) == 35 for row in sub.indices) and sub.indices.max() < 50
    assert np.array_equal(sub.indices, subsample(50, 30, seed=4).indices)
    assert not np.array_equal(sub.indices, subsample(50, 30, seed=5).indices)
    assert sub.scale == pytest.approx(np.sqrt(35 / 15))


def test_frechet_replicates_are_the_fid_of_the_subsample(cell):
    x, ref, reference, indices = cell
    stat = FrechetStatistic(x, reference)
    mu_r, sigma_r = metrics.feature_statistics(ref)
    assert stat.estimate == pytest.approx(metrics.frechet_distance(*metrics.feature_statistics(x), mu_r, sigma_r),
                                          rel=1e-8)
    direct = [metrics.frechet_distance(*metrics.feature_statistics(x[i]), mu_r, sigma_r) for i in indices]
    np.testing.assert_allclose(stat.replicates(indices), direct, rtol=1e-8)


def test_frechet_replicates_with_fewer_samples_than_dimensions():
    """N < D, as in the pipeline (100 samples, 2048-d): the replicates equal the stage's N x N-eigenproblem FID to
    1e-8, and the D x D eigh FID to 1e-6 (its D - r zero eigenvalues come out as +-1e-16 and add sqrt of that)."""
    ref, x = features(120, 48, 2), features(30, 48, 3, shift=0.2)
    reference = Reference.of(ref)
    stat, indices = FrechetStatistic(x, reference), subsample(30, 5, seed=1).indices
    to_reference = [metrics.frechet_distance_to_reference(x[i], reference.mu, reference.sigma,
                                                          reference.covariance_root()) for i in indices]
    np.testing.assert_allclose(stat.replicates(indices), to_reference, rtol=1e-8)
    eigh = [metrics.frechet_distance(*metrics.feature_statistics(x[i]), reference.mu, reference.sigma, method="eigh")
            for i in indices]
    np.testing.assert_allclose(stat.replicates(indices), eigh, rtol=1e-6)


def test_precision_and_recall_replicates_are_those_of_the_subsample(cell):
    x, ref, reference, indices = cell
    precision, recall = precision_statistic(x, reference), RecallStatistic(x, reference)
    assert (precision.estimate, recall.estimate) == metrics.precision_recall(ref, x)
    direct = np.array([metrics.precision_recall(ref, x[i]) for i in indices])
    assert 0 < direct.min() and direct.max() < 1  # neither metric is trivially 0 or 1 here
    np.testing.assert_array_equal(precision.replicates(indices), direct[:, 0])
    np.testing.assert_array_equal(recall.replicates(indices), direct[:, 1])


def test_kid_replicates_are_the_whole_set_kid_of_the_subsample(cell):
    x, ref, reference, indices = cell
    stat = KIDStatistic(x, reference)
    assert stat.estimate == pytest.approx(metrics.kid(x, ref, 1, None)[0], rel=1e-10)
    direct = [metrics.kid(x[i], ref, 1, None)[0] for i in indices]
    np.testing.assert_allclose(stat.replicates(indices), direct, rtol=1e-10)


@pytest.mark.parametrize("splits", [1, 3])
def test_score_and_accuracy_replicates_are_those_of_the_subsample(splits):
    rng = np.random.default_rng(splits)
    probs, labels = rng.dirichlet(np.full(7, 0.3), size=45), rng.integers(0, 7, size=45)
    indices = subsample(45, 5, seed=2).indices
    score = ScoreStatistic(probs, splits)
    assert score.estimate == metrics.inception_score(probs, splits)
    np.testing.assert_allclose(score.replicates(indices),
                               [metrics.inception_score(probs[i], splits) for i in indices], rtol=1e-12)
    accuracy = accuracy_statistic(probs, labels)
    assert accuracy.estimate == metrics.accuracy(probs, labels)
    np.testing.assert_allclose(accuracy.replicates(indices),
                               [metrics.accuracy(probs[i], labels[i]) for i in indices], rtol=1e-12)


def test_replicates_in_chunks_equal_replicates_at_once(cell, monkeypatch):
    x, _, reference, _ = cell
    indices = subsample(40, 9, seed=5).indices
    stats = [FrechetStatistic(x, reference), RecallStatistic(x, reference), KIDStatistic(x, reference)]
    at_once = [s.replicates(indices) for s in stats]
    monkeypatch.setattr(uncertainty, "CHUNK_ENTRIES", 1)  # one replicate at a time
    for s, whole in zip(stats, at_once):
        np.testing.assert_allclose(s.replicates(indices), whole, rtol=1e-12)


def test_interval_is_normal_with_the_delete_d_jackknife_standard_error():
    replicates = np.array([1.0, 2.0, 4.0, 5.0])  # sd (ddof 1) = sqrt(10 / 3)
    got = interval_from(10.0, replicates, scale=2.0, level=0.9)
    half = 1.6448536269514722 * 2.0 * np.sqrt(10 / 3)
    assert (got.estimate, got.lo, got.hi, got.level) == pytest.approx((10.0, 10 - half, 10 + half, 0.9))
    assert got.width == pytest.approx(2 * half) and got.excludes(0.0) and not got.excludes(10.0 + half / 2)


def test_samples_to_resolve_follows_one_over_sqrt_n():
    assert samples_to_resolve(width=2.0, num_samples=100, delta=0.5) == 400  # half-width 1 -> 0.5: 4x the samples
    assert samples_to_resolve(width=2.0, num_samples=100, delta=-2.0) == 25
    z = 1.6448536269514722  # level 0.9; power 0.8 adds z_0.8 = 0.8416 standard errors
    assert samples_to_resolve(2.0, 100, 0.5, power=0.8) == int(np.ceil(400 * ((z + 0.8416212335729143) / z) ** 2))
    with pytest.raises(ValueError):
        samples_to_resolve(2.0, 100, 0.0)


def test_a_resampled_cell_gives_intervals_and_paired_differences_from_stored_replicates(cell):
    x, _, reference, _ = cell
    sub = subsample(40, 20, seed=1)
    stats = {"fid": FrechetStatistic(x, reference), "kid": KIDStatistic(x, reference)}
    a = ResampledCell(stats, sub)
    got = a.intervals(level=0.8)
    assert got == ResampledCell(stats, subsample(40, 20, seed=1)).intervals(level=0.8)
    assert all(iv.lo < iv.estimate < iv.hi and iv.level == 0.8 for iv in got.values())
    assert got["fid"] == interval_from(stats["fid"].estimate, stats["fid"].replicates(sub.indices), sub.scale, 0.8)
    same = a.differences(ResampledCell(stats, sub))  # a cell against itself: every replicate's difference is 0
    assert all((d.delta, d.lo, d.hi, d.resolved) == (0.0, 0.0, 0.0, False) for d in same.values())
    shifted = ResampledCell({"fid": FrechetStatistic(x + 0.5, reference)}, sub)
    delta = shifted.replicates["fid"] - stats["fid"].replicates(sub.indices)  # the same subsamples in both cells
    expected = interval_from(shifted.statistics["fid"].estimate - stats["fid"].estimate, delta, sub.scale, 0.9)
    assert shifted.differences(a)["fid"] == Difference(expected.estimate, expected.lo, expected.hi, 0.9)
    with pytest.raises(ValueError, match="same subsamples"):
        shifted.differences(ResampledCell(stats, subsample(40, 20, seed=2)))
    with pytest.raises(ValueError, match="same seeds and labels"):
        ResampledCell({"fid": FrechetStatistic(x[:30], reference)}, sub)


def test_a_reference_of_statistics_only_serves_fid_and_refuses_the_rest(cell):
    x, ref, reference, _ = cell
    only_stats = Reference(reference.mu, reference.sigma)
    assert FrechetStatistic(x, only_stats).estimate == pytest.approx(FrechetStatistic(x, reference).estimate)
    for make in (precision_statistic, RecallStatistic, KIDStatistic):
        with pytest.raises(ValueError, match="reference's features"):
            make(x, only_stats)
    with pytest.raises(ValueError, match="same feature extractor"):
        FrechetStatistic(x[:, :10], reference)
