"""Simulation-based calibration in CI: one fast configuration, both precisions.

A correct sampler gives uniform ranks; the test fails (at family-wise level 1 - PROB) when
any test quantity's ranks leave the simultaneous ECDF band (the chi-square test is reported as
a second opinion and not part of the verdict).
The negative controls check that the uniformity test has power against the two classic
failure shapes (an over-confident and a biased posterior).
"""

import numpy as np
import numpyro.distributions as dist
import pytest

from deeplinear import FiniteWidthPrior, RegressionData, simulation_based_calibration
from deeplinear.sbc import SBCResult

NUM_SIMULATIONS = 100
NUM_WARMUP, NUM_SAMPLES, THIN = 200, 400, 4  # M = 100 ranked draws per simulation
PROB = 0.99  # family-wise over the configuration's quantities
N0, P = 2, 5


@pytest.mark.device
def test_sbc_finite_width_with_inferred_noise(dtype):
    X = np.random.default_rng(3).normal(size=(N0, P)).T
    data = RegressionData.linear(X, np.zeros((P, 1)), dtype=dtype)
    res = simulation_based_calibration(
        data,
        FiniteWidthPrior.from_depth_width(2, 4, 1),
        noise_variance=dist.LogNormal(np.log(0.5), 0.5),
        num_simulations=NUM_SIMULATIONS,
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        thin=THIN,
        key=0,
        progress_bar=False,
    )
    assert list(res.ranks) == ["Q[0,0]", "noise_variance", "log_likelihood"]
    assert res.num_simulations == NUM_SIMULATIONS and res.num_draws == NUM_SAMPLES // THIN
    for r in res.ranks.values():
        assert r.min() >= 0 and r.max() <= res.num_draws
    assert res.passed(PROB), res.table(PROB)


def test_sbc_same_seed_same_ranks():
    X = np.random.default_rng(3).normal(size=(N0, P)).T
    data = RegressionData.linear(X, np.zeros((P, 1)))
    kw = dict(num_simulations=6, num_warmup=30, num_samples=20, thin=2, key=5, progress_bar=False)
    prior = FiniteWidthPrior.from_depth_width(2, 4, 1)
    a = simulation_based_calibration(data, prior, **kw)
    b = simulation_based_calibration(data, prior, **kw, batch_size=4)  # batching must not change anything
    for k in a.ranks:
        np.testing.assert_array_equal(a.ranks[k], b.ranks[k])


@pytest.mark.parametrize("shape", ["overconfident", "biased"])
def test_uniformity_test_detects_miscalibration(shape):
    """Ranks of a too-narrow posterior pile up at 0 and M; a biased one's drift to one side."""
    rng = np.random.default_rng(0)
    M, S = 100, NUM_SIMULATIONS
    truth = rng.normal(size=S)
    # posterior draws: N(0, 1) is the exact posterior for a N(0,1) truth and uninformative data
    scale, shift = (0.6, 0.0) if shape == "overconfident" else (1.0, 0.5)
    draws = shift + scale * rng.normal(size=(S, M))
    ranks = np.sum(draws < truth[:, None], axis=1)
    bad = SBCResult({"x": ranks}, M, np.zeros(S), shape)
    assert not bad.passed(PROB)
    good = SBCResult({"x": np.sum(rng.normal(size=(S, M)) < truth[:, None], axis=1)}, M, np.zeros(S), "exact")
    assert good.passed(PROB)


def test_sbc_quantities_of_full_noise_and_intercepts():
    """A short run (plumbing, not calibration: benchmarks/sbc.py calibrates these with 500
    simulations): every noise variance, noise correlation and intercept is ranked."""
    X = np.random.default_rng(3).normal(size=(N0, P)).T
    data = RegressionData.linear(X, np.zeros((P, 2)))
    res = simulation_based_calibration(
        data, FiniteWidthPrior.from_depth_width(2, 4, 2), noise_model="full",
        noise_variance=dist.LogNormal(np.log(0.5), 0.5), noise_correlation=dist.LKJCholesky(2, 2.0),
        intercept=dist.Normal(0.0, 1.0), num_simulations=6, num_warmup=30, num_samples=20, thin=2, key=1,
        progress_bar=False,
    )
    assert list(res.ranks) == ["Q[0,0]", "Q[1,0]", "Q[1,1]", "noise_variance[0]", "noise_variance[1]",
                               "noise_correlation[1,0]", "intercept[0]", "intercept[1]", "log_likelihood"]
    for r in res.ranks.values():
        assert r.min() >= 0 and r.max() <= res.num_draws
