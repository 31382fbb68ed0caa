"""Seeded fuzz test: random shapes, orientations, dtypes, magnitudes and NaN/inf placements.

Every combination must end one of two ways: a ``ValueError``/``TypeError`` raised before any
compilation, or finite results (data, fit, predictions, a saved and re-loaded fit). Never a NaN,
an inf, or an exception from JAX, NumPyro, h5py or xarray.
"""

import collections
import warnings

import jax
import numpy as np
import pytest

import deeplinear as dl

NUM_COMBINATIONS = 1000
NUM_SAVED = 25  # save_fit/load_fit round trips (file I/O is the slow part)
NUM_NUTS = 1  # combinations that also run a tiny NUTS fit (compilation is the slow part)
SEED = 20261123
SHAPES_P = (1, 3, 5)  # a few shapes only: each new shape compiles the LOO and predictions again
SHAPES_N0 = (1, 4)
SHAPES_D = (1, 2)
BAD_VALUES = (np.nan, np.inf, -np.inf)


def _combination(rng):
    P, N0, D = (int(rng.choice(s)) for s in (SHAPES_P, SHAPES_N0, SHAPES_D))
    c = {
        "P": P, "N0": N0, "D": D,
        "dtype": str(rng.choice(["float32", "float64"])),
        "x_scale": 10.0 ** rng.uniform(-30, 30),
        "y_scale": 10.0 ** rng.uniform(-30, 30),
        "test_scale": 10.0 ** rng.uniform(-30, 30) if rng.random() < 0.3 else None,
        "orientation": str(rng.choice(["rows", "rows", "rows", "X.T", "Y.T", "both.T"])),
        "bad": str(rng.choice(["none"] * 7 + ["X", "Y", "X_test"])),
        "bad_value": float(rng.choice(BAD_VALUES)),
        "noise": float(rng.choice([0.0, 1e-3, 0.5, 10.0 ** rng.uniform(-45, 10)])),
        "as_list": bool(rng.random() < 0.1),
    }
    return c


def _arrays(c, rng):
    X = rng.normal(size=(c["P"], c["N0"])) * c["x_scale"]
    Y = rng.normal(size=(c["P"], c["D"])) * c["y_scale"]
    X_test = rng.normal(size=(2, c["N0"])) * (c["test_scale"] or c["x_scale"])
    if c["bad"] != "none":
        arr = {"X": X, "Y": Y, "X_test": X_test}[c["bad"]]
        arr.flat[rng.integers(arr.size)] = c["bad_value"]
    if c["orientation"] in ("X.T", "both.T"):
        X = X.T
    if c["orientation"] in ("Y.T", "both.T"):
        Y = Y.T
    if c["as_list"]:
        X, Y = X.tolist(), Y.tolist()
    return X, Y, X_test


def _assert_finite(what, *arrays):
    for a in arrays:
        assert np.all(np.isfinite(np.asarray(a, np.float64))), f"non-finite {what}"


class _Traces:
    """Counts JAX traces (a trace precedes every compilation), to check that refusals come first."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            self.count += 1


def _refused(step, traces, before):
    assert traces.count == before, f"{step} was refused after JAX traced (compiled) something"
    return f"refused: {step}"


def _run(c, rng, tmp_path, index, counts, traces):
    """One combination; returns how it ended."""
    X, Y, X_test = _arrays(c, rng)
    with jax.enable_x64(c["dtype"] == "float64"):
        before = traces.count
        try:
            data = dl.RegressionData.linear(X, Y, dtype=c["dtype"])
        except (ValueError, TypeError):
            return _refused("data", traces, before)
        _assert_finite("data", data.labels, data.rotated_labels, data.basis.eigenvalues, data.null_energy)
        before = traces.count
        try:
            fit = dl.fit(data, dl.NNGPPrior(c["D"]), noise_variance=c["noise"], num_samples=3, num_chains=1)
        except (ValueError, TypeError):
            return _refused("fit", traces, before)
        _assert_finite("loo", fit.datatree["log_likelihood"]["Y"].values)
        before = traces.count
        try:
            pred = fit.predict(X_test)
        except (ValueError, TypeError):
            return _refused("predict", traces, before)
        _assert_finite("predict", pred.mean, pred.covariance(), pred.covariance(include_noise=False))
        if counts["saved"] < NUM_SAVED:
            counts["saved"] += 1
            path = dl.save_fit(fit, tmp_path / f"fit{index}.nc")
            loaded = dl.load_fit(path)
            _assert_finite("loaded predict", loaded.predict(X_test).mean)
        if counts["nuts"] < NUM_NUTS and c["noise"] > 0 and c["P"] == 5 and c["D"] == 1:
            counts["nuts"] += 1
            before = traces.count
            try:
                nuts = dl.fit(data, dl.FiniteWidthPrior((3,), 1), noise_variance=c["noise"], num_warmup=20,
                              num_samples=20, num_chains=1, progress_bar=False)
            except (ValueError, TypeError):
                return _refused("NUTS fit", traces, before)
            _assert_finite("NUTS", nuts.draws("Q"), nuts.predict(X_test).mean)
            return "finite (NUTS too)"
    return "finite"


@pytest.mark.filterwarnings("ignore::deeplinear.PrecisionWarning", "ignore::deeplinear.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_random_hostile_combinations_end_in_a_clear_error_or_finite_results(tmp_path, monkeypatch):
    rng = np.random.default_rng(SEED)
    outcomes = collections.Counter()
    counts = {"saved": 0, "nuts": 0}
    traces = _Traces()
    jax.monitoring.register_event_duration_secs_listener(traces)
    try:
        for i in range(NUM_COMBINATIONS):
            c = _combination(rng)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    outcomes[_run(c, rng, tmp_path, i, counts, traces)] += 1
                except AssertionError as err:
                    raise AssertionError(f"combination {i} {c}: {err}") from None
                except Exception as err:  # anything from JAX, NumPyro, h5py, xarray, or a late ValueError
                    raise AssertionError(f"combination {i} {c}: {type(err).__name__} escaped: {err}") from err
    finally:
        jax.monitoring.unregister_event_duration_listener(traces)
    assert traces.count > 0  # the listener saw the compilations of the finite combinations
    print(f"\n{NUM_COMBINATIONS} hostile combinations: {dict(outcomes)}")
    assert sum(outcomes.values()) == NUM_COMBINATIONS
    assert outcomes["finite"] + outcomes["finite (NUTS too)"] > NUM_COMBINATIONS // 10  # not everything refused
    assert counts["nuts"] == NUM_NUTS and counts["saved"] == NUM_SAVED
