"""Embedding drift: projections, checkpoints, merges, and calibration on seeded simulations.

Simulated 384-dimensional embeddings (the size of common sentence encoders) with the structure real ones
have: 16 latent factors of decreasing spread mapped through a fixed random matrix, plus isotropic noise.
"""

import doctest
import json

import numpy as np
import pytest
from scipy import stats as sps

from detectors import embedding
from detectors.embedding import EmbeddingDrift, weighted_chi2_sf

DIM, FACTORS = 384, 16
SCALES = np.linspace(3.0, 0.5, FACTORS)
LOADINGS = np.random.default_rng(99).normal(size=(FACTORS, DIM)) / np.sqrt(FACTORS)
NOISE = 0.3


def draw(rng, n, factor_shift=0.0, scale=1.0, direction=None):
    """``n`` vectors; ``factor_shift`` moves the first latent factor's mean by that many of its stds."""
    z = rng.normal(size=(n, FACTORS)) * SCALES
    z[:, 0] = z[:, 0] * scale + factor_shift * SCALES[0]
    x = z @ LOADINGS + NOISE * rng.standard_normal((n, DIM), dtype=np.float32)
    if direction is not None:
        x += direction
    return x


@pytest.fixture(scope="module")
def model():
    return EmbeddingDrift.fit_baseline(draw(np.random.default_rng(1), 30_000), components=10)


def test_fit_matches_numpy_reference(model):
    rng = np.random.default_rng(2)
    x = draw(rng, 1000)
    det = EmbeddingDrift(model).update(x)
    basis, scales = np.array(model["basis"]), np.array(model["scales"])
    z = (x - np.array(model["mean"])) @ basis / scales
    np.testing.assert_allclose(det._sum_z, z.sum(axis=0), rtol=1e-9, atol=1e-6)
    # edges are baseline quantiles: each baseline bin holds about 1/20 of the rows
    for counts in model["counts"]:
        assert np.ptp(counts) <= 0.002 * model["n"]
    # the whitened baseline has unit variance along each component
    assert model["explained_variance"] > 0.8 and len(model["edges"]) == 11
    json.dumps(model)


def test_state_merge_and_validation(model):
    rng = np.random.default_rng(3)
    a, b = draw(rng, 700), draw(rng, 1300)
    b[5, 7] = np.nan  # a vector with a missing component counts as missing
    whole = EmbeddingDrift(model).update(a).update(b)
    merged = EmbeddingDrift(model).update(a).merge(EmbeddingDrift(model).update(b))
    assert whole.result() == merged.result()
    assert whole.result().events == 2000 and whole.result().missing == 1
    restored = EmbeddingDrift(model).load_state_dict(json.loads(json.dumps(whole.state_dict())))
    assert restored.result() == whole.result()
    assert EmbeddingDrift(model).update(draw(rng, 50)).result().status == "insufficient_data"
    with pytest.raises(ValueError, match="384"):
        EmbeddingDrift(model).update(np.zeros((3, 10)))
    for bad in (dict(methods=["mmd"]), dict(methods=[]), dict(alpha=0), dict(mean_threshold=-1),
                dict(histogram_threshold=2), dict(min_events=0)):
        with pytest.raises(ValueError):
            EmbeddingDrift(model, **bad)


@pytest.fixture(scope="module")
def null_results(model):
    rng = np.random.default_rng(11)
    return [EmbeddingDrift(model, alpha=0.05).update(draw(rng, 500)).result() for _ in range(300)]


def test_no_drift_false_alarm_rate(null_results):
    # 300 windows of 500 vectors at alpha = 0.05 (for resolution): each method flags at most ~5%
    bound = 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300)
    mean_p = np.array([r.mean_distance.p_value for r in null_results])
    hist_p = np.array([r.histograms.p_value_adjusted for r in null_results])
    assert np.mean(mean_p <= 0.05) <= bound
    assert np.mean(hist_p <= 0.05) <= bound
    assert np.mean([r.mean_distance.drift for r in null_results]) <= bound
    assert np.mean([r.histograms.drift for r in null_results]) <= bound
    # both parts of the mean test are calibrated: their p-values are uniform
    for part in ("p_value_principal", "p_value_residual"):
        assert sps.kstest([getattr(r.mean_distance, part) for r in null_results], "uniform").pvalue > 0.001, part
    # the effects read near zero without drift
    assert np.quantile([r.mean_distance.distance for r in null_results], 0.95) < 0.2


def test_no_drift_at_default_alpha(model):
    rng = np.random.default_rng(12)
    results = [EmbeddingDrift(model).update(draw(rng, 2000)).result() for _ in range(100)]
    assert sum(r.drift for r in results) <= 4  # binomial(100, 0.01): P(X > 4) < 0.4%


def test_latent_mean_shift_is_caught(model):
    # The documented size: the first latent factor's mean moves by 0.25 of its std in 5,000-vector windows.
    rng = np.random.default_rng(13)
    results = [EmbeddingDrift(model).update(draw(rng, 5000, factor_shift=0.25)).result() for _ in range(30)]
    assert np.mean([r.mean_distance.drift for r in results]) >= 0.95
    assert np.mean([r.drift for r in results]) >= 0.95
    assert 0.15 < np.median([r.mean_distance.distance for r in results]) < 0.35


def test_shift_outside_the_principal_subspace_is_caught(model):
    # A shift of 2 noise stds (0.6) along one random direction, almost all of it outside the top 10
    # components: the mean moves by 1.6% of the baseline's RMS spread (centroid_distance 0.016).
    rng = np.random.default_rng(14)
    u = rng.normal(size=DIM)
    u /= np.linalg.norm(u)
    results = [EmbeddingDrift(model).update(draw(rng, 5000, direction=2 * NOISE * u)).result() for _ in range(30)]
    assert np.mean([r.mean_distance.drift for r in results]) >= 0.95
    assert np.median([r.mean_distance.p_value_residual for r in results]) < 1e-6
    # 0.016 plus the sampling noise of a 5,000-vector mean (about 1 / sqrt(5000) = 0.014, in quadrature)
    assert 0.016 < np.median([r.mean_distance.centroid_distance for r in results]) < 0.03


def test_spread_change_is_caught_by_the_histograms(model):
    # The first factor's spread grows by 30% with its mean unchanged: the mean test cannot see it.
    rng = np.random.default_rng(15)
    results = [EmbeddingDrift(model).update(draw(rng, 5000, scale=1.3)).result() for _ in range(30)]
    assert np.mean([r.histograms.drift for r in results]) >= 0.95
    assert np.mean([r.mean_distance.drift for r in results]) <= 0.1


def test_all_components_leave_no_residual():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 4)) * [3.0, 2.0, 1.0, 0.5]
    model = EmbeddingDrift.fit_baseline(x, components=4)
    assert len(model["edges"]) == 4 and model["residual_eigenvalues"] == []
    quiet = EmbeddingDrift(model).update(rng.normal(size=(1000, 4)) * [3.0, 2.0, 1.0, 0.5]).result()
    assert not quiet.drift and quiet.mean_distance.p_value_residual == 1.0
    moved = EmbeddingDrift(model).update(rng.normal(size=(1000, 4)) * [3.0, 2.0, 1.0, 1.0]).result()
    assert moved.histograms.drift and moved.histograms.drifted == ("pc4",)


def test_weighted_chi_square_tail_matches_references():
    # equal weights: a scaled chi-square (scipy); unequal: a seeded Monte Carlo of 100,000 draws
    for x, k in ((3.0, 20), (40.0, 20), (60.0, 50)):
        assert weighted_chi2_sf(2 * x, [2.0] * k) == pytest.approx(sps.chi2.sf(x, k), abs=1e-6)
    weights = np.r_[[40.0, 31.0, 24.0, 14.0], np.full(100, 0.3)]
    sums = np.random.default_rng(5).chisquare(1, size=(100_000, weights.size)).astype(np.float32) @ weights
    for x in np.quantile(sums, [0.5, 0.9, 0.99, 0.995]):
        assert weighted_chi2_sf(x, weights) == pytest.approx(np.mean(sums > x), abs=0.0015)
    assert weighted_chi2_sf(5.0, []) == 1.0


def test_docstring_examples_hold():
    failed, attempted = doctest.testmod(embedding, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
