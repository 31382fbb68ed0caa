"""Bad input raises ValueError/TypeError naming the argument, before any work."""

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl
from deeplinear import (
    FiniteWidthPrior,
    KroneckerNormal,
    ModelSpec,
    NNGPPrior,
    PredictiveMixture,
    ProportionalLimitPrior,
    RegressionData,
    compare_models,
    deep_linear_model,
    exact_posterior_d1,
    fit,
    sample_network_outputs,
    save_fit,
    simulation_based_calibration,
)
from deeplinear import moments as mom
from deeplinear.app.demo import inference_demo
from deeplinear.app.prior_laws import lognormal_convergence, offdiagonal_variance
from deeplinear.datasets import correlated_outputs
from deeplinear.likelihood import loo_log_likelihood
from deeplinear.predictive import conditional_predictive
from deeplinear.sweep import run_sweep

KEY = jax.random.key(0)
X = np.ones((3, 2))
XI = np.random.default_rng(0).normal(size=(3, 5)).T  # P = 5 inputs (rows), N0 = 3 (rank 3 < P)
YI = np.random.default_rng(1).normal(size=(2, 5)).T  # D = 2
DATA = RegressionData.linear(XI, YI)
LIM2 = ProportionalLimitPrior(1.0, 2, num_steps=4)
NAN_Y = YI.copy()
NAN_Y[1, 0] = np.nan
NOT_PSD = np.diag([1.0, -1.0, 2.0, 1.0, 1.0])
NOT_SYM = np.eye(5) + np.triu(np.ones((5, 5)), 1)
DATA1 = RegressionData.linear(XI, YI[:, :1])  # D = 1
FIN1 = FiniteWidthPrior((4,), 1)
TEST = DATA.prediction_kernel(np.ones((2, 3)))
EXACT = fit(DATA, NNGPPrior(2), noise_variance=0.5, num_samples=2, num_chains=1)  # no MCMC
Q3 = np.broadcast_to(np.eye(2), (3, 2, 2))
NAN_Q = Q3.copy()
NAN_Q[1, 0, 0] = np.nan


def sbc(**kw):
    args = dict(data=DATA1, prior=FIN1, num_simulations=4, num_warmup=10, num_samples=10, thin=2, progress_bar=False)
    args.update(kw)
    return simulation_based_calibration(args.pop("data"), args.pop("prior"), **args)

CASES = [
    # (callable, exception, fragment of the message)
    (lambda: FiniteWidthPrior((4, 1, 4), 2), ValueError, "N_l >= D"),
    (lambda: FiniteWidthPrior((4, 2.5), 2), TypeError, "widths[1]"),
    (lambda: FiniteWidthPrior((4, 0), 1), ValueError, "widths[1]"),
    (lambda: FiniteWidthPrior((4, -3), 1), ValueError, "widths[1]"),
    (lambda: FiniteWidthPrior((), 1), ValueError, "widths"),
    (lambda: FiniteWidthPrior(4, 1), TypeError, "widths"),
    (lambda: FiniteWidthPrior((4,), 0), ValueError, "num_outputs"),
    (lambda: FiniteWidthPrior((4,), 2.0), TypeError, "num_outputs"),
    (lambda: FiniteWidthPrior.from_depth_width(0, 4, 1), ValueError, "depth"),
    (lambda: FiniteWidthPrior.from_depth_width(3, 1.5, 1), TypeError, "width"),
    (lambda: FiniteWidthPrior.from_depth_width(3, 2, 3), ValueError, "N_l >= D"),
    (lambda: ProportionalLimitPrior(0.0, 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(-1.0, 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(float("nan"), 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(float("inf"), 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior("1", 2), TypeError, "ratio"),
    (lambda: ProportionalLimitPrior(np.ones(2), 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(1.0, 2, num_steps=0), ValueError, "num_steps"),
    (lambda: ProportionalLimitPrior(1.0, 2, num_steps=3.5), TypeError, "num_steps"),
    (lambda: ProportionalLimitPrior(1.0, 2, scheme="milstein"), ValueError, "scheme must be one of"),
    (lambda: ProportionalLimitPrior(1.0, 2, scheme=2), TypeError, "scheme must be one of"),
    (lambda: NNGPPrior(0), ValueError, "num_outputs"),
    (lambda: NNGPPrior(2).sample_q(0.5), TypeError, "key"),
    (lambda: NNGPPrior(2).sample_q(2**32 + 3), ValueError, "[0, 2**32)"),
    (lambda: NNGPPrior(2).sample_q(-1), ValueError, "key"),
    (lambda: NNGPPrior(2).sample_q(np.array([1, 2, 3], np.uint32)), TypeError, "key"),
    (lambda: FiniteWidthPrior((3,), 1).sample_vbar(KEY, (-1,)), ValueError, "sample_shape"),
    (lambda: FiniteWidthPrior((3,), 1).sample_vbar(KEY, "10"), TypeError, "sample_shape"),
    (lambda: FiniteWidthPrior((3,), 1).sample_vbar(KEY, 2, dtype=np.int32), TypeError, "dtype"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.ones(3)), ValueError, "rank 2"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.full((2, 2), np.nan)), ValueError, "NaN"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.full((2, 2), np.inf)), ValueError, "NaN"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.ones((0, 2))), ValueError, "non-empty"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.array([["a"]], object)), TypeError, "X"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, X, lambda_star=-1.0), ValueError, "lambda_star"),
    (lambda: sample_network_outputs(KEY, X, (3, 3), 2, -1), ValueError, "sample_shape"),
    (lambda: sample_network_outputs(KEY, X, (3, 0), 2, 10), ValueError, "widths[1]"),
    (lambda: sample_network_outputs(KEY, X, (3, 3), 2, 10, layer_scales=[1, 1]), ValueError, "layer_scales"),
    (lambda: sample_network_outputs(KEY, X, (3, 3), 2, 10, layer_scales=[1, 0, 1]), ValueError, "layer_scales"),
    (lambda: sample_network_outputs(KEY, X[None], (3,), 2, 10), ValueError, "rank 2"),
    (lambda: sample_network_outputs("seed", X, (3,), 2, 10), TypeError, "key"),
    (lambda: mom.finite_q_second_moments((1, 3), 2), ValueError, "N_l >= D"),
    (lambda: mom.limit_q_second_moments(-0.5, 2), ValueError, "ratio"),
    (lambda: mom.finite_vbar_diag_moment((3,), 1, -4.0), ValueError, "s must"),
    # --- inference (issue 3) ---
    (lambda: RegressionData.linear(XI, NAN_Y), ValueError, "Y contains NaN"),
    (lambda: RegressionData.linear(np.where(XI > 1, np.inf, XI), YI), ValueError, "X contains NaN"),
    (lambda: RegressionData.linear(XI, YI[:4]), ValueError, "same P; X is (5, 3) and Y is (4, 2)"),
    (lambda: RegressionData.linear(XI, YI[:, 0]), ValueError, "1-D array"),
    (lambda: RegressionData.linear(XI[:0], YI[:0]), ValueError, "non-empty"),
    (lambda: RegressionData.linear(XI, np.ones((0, 5))), ValueError, "non-empty"),
    (lambda: RegressionData.linear(XI, [["a"] * 2] * 5), TypeError, "Y must hold real numbers"),
    # columns instead of rows (theory.md's layout) with N0 != P: the error names the shapes
    (lambda: RegressionData.linear(XI.T, YI.T), ValueError, "(P, N0) and Y (P, D)"),
    (lambda: RegressionData.linear(XI.T, YI), ValueError, "X looks transposed"),
    (lambda: RegressionData.linear(XI, YI.T), ValueError, "Y looks transposed"),
    (lambda: RegressionData.from_gram(XI @ XI.T, YI.T), ValueError, "(P, D) = (5, D)"),
    (lambda: DATA.prediction_kernel(np.ones((3, 2))), ValueError, "pass X_test.T"),
    (lambda: RegressionData.from_gram(NOT_PSD, YI), ValueError, "positive semi-definite"),
    (lambda: RegressionData.from_gram(NOT_SYM, YI), ValueError, "symmetric"),
    (lambda: RegressionData.from_gram(np.eye(4), YI), ValueError, "(P, D) = (4, D)"),
    (lambda: RegressionData.from_gram(np.ones((5, 4)), YI), ValueError, "square"),
    (lambda: fit(DATA, ProportionalLimitPrior(1.0, 3)), ValueError, "num_outputs = 3"),
    (lambda: fit(DATA, LIM2, noise_variance=-0.1), ValueError, "noise_variance"),
    (lambda: fit(DATA, LIM2, noise_variance=0.0), ValueError, "rank 3 < P = 5"),
    (lambda: fit(DATA, LIM2, lambda_star=0.0), ValueError, "lambda_star"),
    (lambda: fit(DATA, LIM2, lambda_star="big"), TypeError, "lambda_star"),
    (lambda: fit(DATA, FiniteWidthPrior((4,), 2), ratio=dist.LogNormal()), ValueError, "ratio"),
    (lambda: fit(DATA, LIM2, ratio=2.0), TypeError, "ratio"),
    (lambda: fit(DATA, LIM2, num_samples=0), ValueError, "num_samples"),
    (lambda: fit(DATA, LIM2, num_chains=1.5), TypeError, "num_chains"),
    (lambda: fit(DATA, LIM2, chain_method="threads"), ValueError, "chain_method"),
    (lambda: fit(DATA, LIM2, key="0"), TypeError, "key"),
    (lambda: fit(DATA, LIM2, key=2**32 + 3), ValueError, "key"),
    (lambda: fit(DATA, LIM2, progress_bar="no"), TypeError, "progress_bar"),
    (lambda: fit(DATA, LIM2, log_likelihood="no"), TypeError, "log_likelihood"),
    (lambda: fit(DATA, LIM2, target_accept_prob="0.9"), TypeError, "target_accept_prob"),
    (lambda: fit(DATA, LIM2, target_accept_prob=1.5), ValueError, "target_accept_prob"),
    (lambda: fit((XI, YI), LIM2), TypeError, "RegressionData"),
    (lambda: fit(DATA, "limit"), TypeError, "prior must be"),
    (lambda: fit(DATA, LIM2, output_names=["a"]), ValueError, "output_names"),
    (lambda: DATA.prediction_kernel(np.ones((2, 4))), ValueError, "N0 = 3"),
    (lambda: DATA.prediction_kernel(np.full((2, 3), np.nan)), ValueError, "X_test contains NaN"),
    (lambda: DATA.prediction_kernel(cross_gram=np.ones((5, 2)), test_gram=np.eye(2)), ValueError, "linear kernel"),
    (lambda: KroneckerNormal(np.eye(3), 1.0, 0.5, DATA), ValueError, "q must have shape"),
    (lambda: KroneckerNormal(np.eye(2), 1.0, 0.5, (XI, YI)), TypeError, "RegressionData"),
    (lambda: exact_posterior_d1(DATA, NNGPPrior(2)), ValueError, "D = 1"),
    # --- issue 4: the rest of the public API ---
    (lambda: exact_posterior_d1(DATA1, NNGPPrior(2)), ValueError, "num_outputs = 1"),
    (lambda: exact_posterior_d1(DATA1, FIN1, noise_variance=float("nan")), ValueError, "noise_variance"),
    (lambda: exact_posterior_d1(DATA1, FIN1, lambda_star=-2.0), ValueError, "lambda_star"),
    (lambda: exact_posterior_d1(DATA1, FIN1, X_test=np.ones((2, 2))), ValueError, "N0 = 3"),
    (lambda: exact_posterior_d1((XI, YI[:1]), FIN1), TypeError, "RegressionData"),
    (lambda: fit(DATA, LIM2, num_samples=10**9, num_chains=4), ValueError, "exceeds"),
    (lambda: fit(DATA, LIM2, num_warmup=-5), ValueError, "num_warmup"),
    (lambda: fit(DATA, LIM2, max_tree_depth=0), ValueError, "max_tree_depth"),
    (lambda: fit(DATA, LIM2, noise_variance=np.inf), ValueError, "noise_variance"),
    (lambda: fit(DATA, LIM2, noise_variance=[0.1, 0.2]), (TypeError, ValueError), "noise_variance"),
    (lambda: RegressionData.linear(XI.astype(int) * 0, YI), ValueError, "X is zero"),
    (lambda: RegressionData.linear(XI, YI, dtype="int32"), TypeError, "dtype"),
    (lambda: RegressionData.linear(XI, np.array(YI, dtype=object)), TypeError, "Y"),
    (lambda: RegressionData.linear(XI.tolist(), YI.tolist()[:4] + [[1, 2, 3]]), (TypeError, ValueError), "Y"),
    (lambda: RegressionData.from_gram(np.zeros((5, 5)), YI), ValueError, "no positive eigenvalue"),
    (lambda: RegressionData.from_gram(np.full((5, 5), np.nan), YI), ValueError, "NaN"),
    (lambda: KroneckerNormal(np.eye(2), 1.0, 0.5, DATA, root=np.eye(3)), ValueError, "root must have shape"),
    (lambda: KroneckerNormal(np.eye(2), -1.0, 0.5, DATA), ValueError, "lambda_star"),
    (lambda: KroneckerNormal(np.eye(2), 1.0, 0.0, DATA), ValueError, "rank 3 < P = 5"),
    (lambda: KroneckerNormal(np.eye(2), 1.0, np.array([0.5, 0.5]), DATA), ValueError, "must be a scalar"),
    (lambda: deep_linear_model(DATA, LIM2, labels=np.ones((4, 2))), ValueError, "labels must have the shape"),
    (lambda: deep_linear_model(DATA, NNGPPrior(3)), ValueError, "num_outputs = 3"),
    (lambda: loo_log_likelihood(np.eye(2), 1.0, -1.0, DATA), ValueError, "noise_variance"),
    (lambda: conditional_predictive(np.eye(2), 1.0, -1.0, DATA, TEST), ValueError, "noise_variance"),
    (lambda: conditional_predictive(np.eye(3), 1.0, 0.5, DATA, TEST), ValueError, "q must have shape"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, "data", TEST), TypeError, "RegressionData"),
    (lambda: PredictiveMixture(np.eye(2), 1.0, 0.5, DATA, TEST), ValueError, "q must have shape (S, D, D)"),
    (lambda: PredictiveMixture(NAN_Q, 1.0, 0.5, DATA, TEST), ValueError, "q contains NaN"),
    (lambda: PredictiveMixture(Q3, 1.0, np.nan, DATA, TEST), ValueError, "noise_variance must be finite"),
    (lambda: PredictiveMixture(Q3[:0], 1.0, 0.5, DATA, TEST), ValueError, "at least one draw"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, DATA, np.ones((3, 2))), TypeError, "PredictionKernel"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, DATA, TEST, batch_size=0), ValueError, "batch_size"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, DATA, TEST).sample(KEY, -1), ValueError, "sample_shape"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, DATA, TEST).log_predictive_density(np.ones((2, 3))), ValueError, "(2, 2)"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, DATA, TEST).log_predictive_density(np.ones((5, 2))), ValueError, "Y_test"),
    (lambda: PredictiveMixture(Q3, 1.0, 0.5, DATA, TEST).covariance(include_noise="yes"), TypeError, "include_noise"),
    (lambda: compare_models({}), TypeError, "non-empty dict"),
    (lambda: compare_models({"a": "fit"}), TypeError, "fits['a']"),
    (lambda: save_fit("fit", "x.nc"), TypeError, "PosteriorFit"),
    (lambda: save_fit(EXACT, "never-written.nc", overwrite="no"), TypeError, "overwrite"),
    (lambda: sbc(num_simulations=0), ValueError, "num_simulations"),
    (lambda: sbc(num_simulations=2.5), TypeError, "num_simulations"),
    (lambda: sbc(num_samples=10, thin=3), ValueError, "multiple of thin"),
    (lambda: sbc(num_samples=10, thin=10), ValueError, "at least 2 posterior draws"),
    (lambda: sbc(num_simulations=10**7, num_samples=10**3, thin=1), ValueError, "exceeds 1e8"),
    (lambda: sbc(batch_size=0), ValueError, "batch_size"),
    (lambda: sbc(key=1.0), TypeError, "key"),
    (lambda: sbc(target_accept_prob=0), ValueError, "target_accept_prob"),
    (lambda: sbc(prior=NNGPPrior(1)), ValueError, "nothing to calibrate"),
    (lambda: sbc(prior=NNGPPrior(2)), ValueError, "num_outputs = 2"),
    (lambda: sbc(data=(XI, YI)), TypeError, "RegressionData"),
    (lambda: sbc(noise_variance=-1.0), ValueError, "noise_variance"),
    (lambda: inference_demo(dataset=(XI, YI)), TypeError, "dataset"),
    # --- the model specification: validated once, one written form ---
    (lambda: ModelSpec("limit"), TypeError, "prior must be"),
    (lambda: ModelSpec(LIM2, noise_variance="0.1"), TypeError, "noise_variance"),
    (lambda: ModelSpec(LIM2, lambda_star=True), TypeError, "lambda_star"),
    (lambda: ModelSpec(NNGPPrior(2), ratio=dist.LogNormal()), ValueError, "ProportionalLimitPrior"),
    (lambda: ModelSpec.from_dict({"prior": {"kind": "deep"}}), ValueError, "kind in"),
    (lambda: ModelSpec.from_dict({"prior": {"kind": "nngp", "num_outputs": 2}, "noise": 1.0}), ValueError, "unknown"),
    (lambda: ModelSpec.from_dict({"prior": {"kind": "nngp", "num_outputs": 2},
                                  "noise_variance": {"distribution": "Nope"}}), ValueError, "numpyro distribution"),
    (lambda: ModelSpec.from_json("{not json"), ValueError, "JSON"),
    # found by the seeded argument fuzz (issue 28): raw numpy/pathlib errors naming no argument
    (lambda: ModelSpec(LIM2, noise_model=np.ones(3)), TypeError, "noise_model must be one of"),
    (lambda: run_sweep({"x": (DATA, ModelSpec(LIM2))}, checkpoint=float("inf")), TypeError, "checkpoint must be a"),
    (lambda: run_sweep({1: (DATA, ModelSpec(LIM2))}), TypeError, "tasks: every name"),
    (lambda: dl.load_fit(""), TypeError, "path must be a file path"),
    # hyperpriors outside the support are refused before compilation (issue 12, item 6)
    (lambda: fit(DATA, LIM2, ratio=dist.Normal(0.0, 1.0)), ValueError, "ratio must be a prior over positive"),
    (lambda: fit(DATA, LIM2, noise_variance=dist.Normal(0.0, 1.0)), ValueError, "noise_variance must be a prior"),
    (lambda: fit(DATA, LIM2, lambda_star=dist.Uniform(-1.0, 1.0)), ValueError, "lambda_star must be a prior"),
    (lambda: fit(DATA, LIM2, noise_variance=dist.HalfNormal(np.ones(2))), ValueError, "one scalar"),
    (lambda: ModelSpec(LIM2, noise_variance=dist.Normal(np.zeros(2), 1.0)), ValueError, "one scalar"),
    (lambda: ModelSpec(LIM2, noise_variance=dist.TransformedDistribution(
        dist.Normal(0.0, 1.0), dist.transforms.ExpTransform())).to_dict(), ValueError, "cannot be written down"),
    (lambda: deep_linear_model(DATA, ModelSpec(LIM2), noise_variance=0.5), ValueError, "inside the ModelSpec"),
    (lambda: inference_demo(dataset=correlated_outputs(), output_names=["a"]), ValueError, "output_names"),
    # L = aN must be whole, so that L/N is the a of the limit it is compared with (issue 14, item 7)
    (lambda: lognormal_convergence(KEY, ratios=(0.25,), widths=(2,)), ValueError, "aN = 0.5"),
    (lambda: offdiagonal_variance(KEY, ratio=0.5, widths=(3,)), ValueError, "whole number"),
]


@pytest.mark.parametrize("call,exc,fragment", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_raises_clear_error(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value), str(info.value)


def test_bad_input_is_caught_before_compilation(monkeypatch):
    # A traced computation would call jax.jit/lax; bad widths must fail first.
    calls = []
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError):
        FiniteWidthPrior((5, 1), 2).sample_vbar(KEY, 3)
    assert not calls


def test_import_changes_no_global_state():
    import subprocess
    import sys

    code = (
        "import os, jax; flags = os.environ.get('XLA_FLAGS'); import deeplinear; "
        "assert not jax.config.jax_enable_x64; assert os.environ.get('XLA_FLAGS') == flags; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_sbc_bad_input_is_caught_before_compilation(monkeypatch):
    import deeplinear.sbc

    calls = []
    monkeypatch.setattr(deeplinear.sbc, "Predictive", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(jax, "jit", lambda *a, **k: calls.append(1))
    for bad in (dict(thin=3), dict(prior=NNGPPrior(1)), dict(num_simulations=0)):
        with pytest.raises((ValueError, TypeError)):
            sbc(**bad)
    assert not calls


def test_fit_bad_input_is_caught_before_sampling(monkeypatch):
    import numpyro.infer

    calls = []
    monkeypatch.setattr(numpyro.infer.MCMC, "run", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(jax, "jit", lambda *a, **k: calls.append(1))
    for bad in (dict(noise_variance=-1.0), dict(num_samples=0), dict(chain_method="x")):
        with pytest.raises((ValueError, TypeError)):
            fit(DATA, LIM2, **bad)
    assert not calls
