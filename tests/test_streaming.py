"""Streaming set-up (issue 13 item 4) and LOO beyond the memory budget (item 3).

References: the in-memory set-up (a thin SVD of all rows, a different algorithm from the
streamed QR merge) and ``arviz_stats.loo`` on the full pointwise matrix."""

import warnings

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl
from deeplinear.likelihood import KroneckerNormal
from deeplinear.streaming import LinearStatistics

ROUND_OFF = 1e-10  # float64: the two set-ups agree to this relative error


def _rows(seed, P, N0, D, rank=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(P, N0)) * rng.uniform(0.1, 10, size=N0)
    if rank is not None:  # collinear columns: rank(X) < N0
        X[:, rank:] = X[:, :rank] @ rng.normal(size=(rank, N0 - rank))
    Y = X @ rng.normal(size=(N0, D)) / N0 + rng.normal(size=(P, D))
    return X, Y


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize(
    "P, N0, D, rank, chunk_rows",
    [(500, 4, 2, None, 7), (500, 4, 2, None, 500), (3, 5, 2, None, 1), (40, 40, 3, None, 9), (300, 6, 1, 3, 64)],
    ids=["chunks7", "one-chunk", "P<N0", "square", "rank-deficient"],
)
def test_streamed_setup_equals_in_memory(P, N0, D, rank, chunk_rows):
    with jax.enable_x64(True):
        X, Y = _rows(0, P, N0, D, rank)
        memory = dl.RegressionData.linear(X, Y, dtype="float64")
        streamed = dl.RegressionData.from_chunks(dl.ArrayChunks(X, Y, chunk_rows=chunk_rows), dtype="float64")
        assert not streamed.has_rows and memory.has_rows
        assert (streamed.num_obs, streamed.num_outputs, streamed.basis.rank, streamed.num_features) == (
            memory.num_obs, memory.num_outputs, memory.basis.rank, memory.num_features)
        for a, b in [(streamed.basis.eigenvalues, memory.basis.eigenvalues),
                     (streamed.basis.input_projection, memory.basis.input_projection),
                     (streamed.rotated_labels, memory.rotated_labels)]:
            assert _relative(a, b) < ROUND_OFF
        assert abs(float(streamed.null_energy) - float(memory.null_energy)) <= ROUND_OFF * float(np.sum(Y**2))
        # the likelihood and the predictions, which are all the fit and predict use
        A = np.random.default_rng(1).normal(size=(D, D))
        q = A @ A.T + 0.1 * np.eye(D)
        lp_streamed = KroneckerNormal(q, 1.3, 0.7, streamed).data_log_prob()
        lp_memory = KroneckerNormal(q, 1.3, 0.7, memory).log_prob(memory.labels)
        assert abs(float(lp_streamed) - float(lp_memory)) < ROUND_OFF * abs(float(lp_memory))
        X_test = np.random.default_rng(2).normal(size=(6, N0))
        mixtures = [dl.PredictiveMixture(q[None], 1.3, 0.7, d, d.prediction_kernel(X_test)) for d in (streamed, memory)]
        assert _relative(mixtures[0].mean, mixtures[1].mean) < ROUND_OFF
        assert _relative(mixtures[0].covariance(), mixtures[1].covariance()) < ROUND_OFF


def test_merge_order_and_memmap(tmp_path):
    """A tree of merges (as a distributed reduction would do) equals one sequential pass, and
    ArrayChunks reads a NumPy memmap on disk."""
    with jax.enable_x64(True):
        X, Y = _rows(3, 1000, 5, 3)
        np.save(tmp_path / "X.npy", X)
        np.save(tmp_path / "Y.npy", Y)
        source = dl.ArrayChunks(np.load(tmp_path / "X.npy", mmap_mode="r"), np.load(tmp_path / "Y.npy", mmap_mode="r"),
                                chunk_rows=100)
        parts = [LinearStatistics.from_chunk(x, y) for x, y in source]
        while len(parts) > 1:  # pairwise, like a tree reduction
            parts = [parts[i].merge(parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
        tree = dl.RegressionData.from_statistics(parts[0], dtype="float64")
        sequential = dl.RegressionData.from_chunks(source, dtype="float64")
        assert parts[0].num_rows == 1000
        assert _relative(tree.rotated_labels, sequential.rotated_labels) < ROUND_OFF
        assert _relative(tree.basis.eigenvalues, sequential.basis.eigenvalues) < ROUND_OFF
        Xr, Yr = source.rows([3, 500, 999])
        np.testing.assert_array_equal(Xr, X[[3, 500, 999]])


def test_streamed_setup_refuses_bad_chunks():
    X, Y = _rows(4, 50, 3, 2)
    with pytest.raises(ValueError, match="empty"):
        dl.RegressionData.from_chunks([])
    with pytest.raises(TypeError, match="chunk 0 must be a pair"):
        dl.RegressionData.from_chunks([X])
    bad = X.copy()
    bad[7, 1] = np.nan
    with pytest.raises(ValueError, match="X \\(chunk\\)"):
        dl.RegressionData.from_chunks(dl.ArrayChunks(bad, Y, chunk_rows=10))
    with pytest.raises(ValueError, match="same columns"):
        dl.RegressionData.from_chunks([(X[:10], Y[:10]), (X[10:, :2], Y[10:])])
    with pytest.raises(ValueError, match="same number of rows"):
        dl.ArrayChunks(X, Y[:-1])
    with pytest.raises(ValueError, match="rescale"):  # magnitudes float32 cannot hold, as in memory
        dl.RegressionData.from_chunks([(X * 1e30, Y)], dtype="float32")


def test_streamed_data_say_what_needs_rows():
    X, Y = _rows(5, 60, 3, 2)
    streamed = dl.RegressionData.from_chunks(dl.ArrayChunks(X, Y, chunk_rows=16))
    with pytest.raises(ValueError, match="per-row"):
        KroneckerNormal(np.eye(2), 1.0, 1.0, streamed).sample(jax.random.key(0))
    with pytest.raises(ValueError, match="per-row"):
        dl.simulation_based_calibration(streamed, dl.NNGPPrior(2), noise_variance=dist.HalfNormal(1.0))
    with pytest.raises(ValueError, match="needs the training rows"):
        dl.fit(streamed, dl.NNGPPrior(2), log_likelihood=True)
    res = dl.fit(streamed, dl.NNGPPrior(2), noise_variance=0.5, num_samples=10, num_chains=2)
    assert "log_likelihood" not in res.datatree.children and "observed_data" not in res.datatree.children
    with pytest.raises(ValueError, match="rows=ArrayChunks"):
        dl.loo(res)
    with pytest.raises(ValueError, match="per-row"):
        dl.save_fit(res, "never-written.nc")


LOO_P, LOO_M, LOO_SEEDS = 2000, 200, 16


@pytest.fixture(scope="module")
def loo_fit():
    with jax.enable_x64(True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, Y = _rows(6, LOO_P, 4, 2)
        data = dl.RegressionData.linear(X, Y, dtype="float64")
        res = dl.fit(data, dl.ProportionalLimitPrior(0.5, 2, num_steps=8), noise_variance=dist.HalfNormal(1.0),
                     num_warmup=200, num_samples=200, num_chains=2, progress_bar=False)
    return res, X, Y  # outside the float64 context: a module fixture must not leave x64 on for other tests


def test_subsampled_loo_within_its_stated_error(loo_fit):
    """The subsampled estimate is within 4 of its stated subsampling standard errors of the exact
    PSIS-LOO (arviz on all S x P terms), and that error is honest: over LOO_SEEDS subsamples the
    spread of the estimates matches the stated error (ratio in [0.5, 2])."""
    res, X, Y = loo_fit
    with jax.enable_x64(True):
        exact = dl.loo(res)
        subs = [dl.loo(res, observations=LOO_M, seed=s) for s in range(LOO_SEEDS)]
    estimates = np.array([s.elpd for s in subs])
    stated = np.array([s.subsampling_se for s in subs])
    assert abs(subs[0].elpd - exact.elpd) < 4 * subs[0].subsampling_se
    assert 0.5 < np.std(estimates, ddof=1) / np.sqrt(np.mean(stated**2)) < 2
    assert subs[0].n_data_points == LOO_P and subs[0].subsample_size == LOO_M


def test_difference_estimator_is_unbiased_with_an_unbiased_variance_over_every_subsample():
    """deeplinear.loo.difference_estimate against exact enumeration of all C(P, m) subsamples of a
    small population: the mean of the estimates is sum(e) and the mean of the stated subsampling
    variances is their actual variance (both exact under simple random sampling without
    replacement); with every input sampled the estimate is sum(e), its subsampling SE 0 and its SE
    sqrt(sum((e - mean e)^2)), and one sampled input has infinite SEs."""
    import itertools

    from deeplinear.loo import difference_estimate

    rng = np.random.default_rng(0)
    P, m = 9, 4
    e = rng.normal(-1.0, 0.7, P)
    pi = e + rng.normal(0.0, 0.2, P)  # an approximation of the exact terms
    subsets = [list(c) for c in itertools.combinations(range(P), m)]
    out = np.array([difference_estimate(e[c], pi[c], pi)[:2] for c in subsets])
    np.testing.assert_allclose(out[:, 0].mean(), e.sum(), rtol=1e-12)
    np.testing.assert_allclose(np.mean(out[:, 1] ** 2), out[:, 0].var(ddof=0), rtol=1e-10)
    elpd, sub_se, se = difference_estimate(e, pi, pi)
    assert abs(elpd - e.sum()) < 1e-12 and sub_se == 0.0
    np.testing.assert_allclose(se, np.sqrt(np.sum((e - e.mean()) ** 2)), rtol=1e-10)
    assert difference_estimate(e[:1], pi[:1], pi)[1:] == (np.inf, np.inf)
    with pytest.raises(ValueError, match="m sampled terms"):
        difference_estimate(e[:3], pi[:2], pi)


def test_streamed_loo_equals_in_memory_loo(loo_fit):
    """The same draws with the data streamed (rows passed again) give the same subsampled LOO."""
    res, X, Y = loo_fit
    with jax.enable_x64(True):
        source = dl.ArrayChunks(X, Y, chunk_rows=300)
        streamed = dl.PosteriorFit(res.datatree, res.spec, dl.RegressionData.from_chunks(source, dtype="float64"))
        a = dl.loo(res, observations=LOO_M, seed=3)
        b = dl.loo(streamed, rows=source, observations=LOO_M, seed=3)
    np.testing.assert_array_equal(a.loo_subsample_observations, b.loo_subsample_observations)
    assert abs(a.elpd - b.elpd) < 1e-8 * abs(a.elpd) and abs(a.subsampling_se - b.subsampling_se) < 1e-6


def test_fit_beyond_the_budget_keeps_no_pointwise_terms(monkeypatch):
    import deeplinear.inference as inference

    monkeypatch.setattr(inference, "LOO_BUDGET_ENTRIES", 1000)
    X, Y = _rows(7, 30, 3, 2)
    data = dl.RegressionData.linear(X, Y)
    with pytest.raises(ValueError, match="LOO_BUDGET_ENTRIES"):
        dl.fit(data, dl.NNGPPrior(2), num_samples=50, num_chains=2, log_likelihood=True)
    res = dl.fit(data, dl.NNGPPrior(2), num_samples=50, num_chains=2)
    assert "log_likelihood" not in res.datatree.children
    sub = dl.loo(res, observations=10)
    exact = dl.loo(dl.fit(data, dl.NNGPPrior(2), num_samples=50, num_chains=2, log_likelihood=False),
                   observations=30)  # every input: the difference estimator is exact
    assert sub.subsample_size == 10 and abs(exact.subsampling_se) < 1e-9


def test_relative_log_density_resolves_energy_differences_at_huge_P():
    """The models' likelihood leaves out the data constant n/2 (log 2 pi sigma-hat^2 + 1): in
    float64 it is exactly that shift; in float32 at P = 10^7 the differences between noise
    variances near the posterior are right to 0.05, where the absolute form is off by more (its
    value, ~ -7e6, rounds to multiples of 0.5)."""
    import dataclasses

    X, Y = _rows(8, 400, 2, 1)
    P = 10_000_000
    base = LinearStatistics.from_chunk(X, Y)
    r = base.r_factor.copy()
    r[2:, 2:] *= np.sqrt((P - 2) * 0.25 / np.sum(r[2:, 2:] ** 2))  # null-space energy 0.25 per dimension
    stats = dataclasses.replace(base, r_factor=r, num_rows=P)
    q = np.eye(1)
    noises = 0.25 * (1 + np.linspace(0, 3, 13) * np.sqrt(2 / P))  # from the posterior mode to 3 sd from it

    def values(dtype, relative):
        data = dl.RegressionData.from_statistics(stats, dtype=dtype)
        return [float(KroneckerNormal(q, 1.0, s, data, labels_are_data=True, relative=relative).data_log_prob())
                for s in noises]

    with jax.enable_x64(True):
        exact = values("float64", False)
        shifted = values("float64", True)
        n = P - 2
        constant = n / 2 * (np.log(2 * np.pi * 0.25) + 1)
        assert abs(exact[0] - (shifted[0] - constant)) < 1e-9 * abs(exact[0])
    truth = np.subtract(exact, exact[0])  # 0 to -4.5: differences of order one
    assert np.min(truth) < -4
    relative32 = np.subtract(values("float32", True), values("float32", True)[0])
    absolute32 = np.subtract(values("float32", False), values("float32", False)[0])
    assert np.max(np.abs(relative32 - truth)) < 0.05
    assert np.max(np.abs(absolute32 - truth)) > 0.1
