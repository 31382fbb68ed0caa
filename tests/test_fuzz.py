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


# --- Arguments of the newer entry points: log_evidence, renormalized_kernel, run_sweep ------------

NUM_ARGUMENT_COMBINATIONS = 1000
ARGUMENT_SEED = 20261206
REPLACE_PROBABILITY = 0.2  # each argument is replaced by a hostile value with this probability
HOSTILE_VALUES = (None, "abc", "", -1, 0, 1.5, np.nan, np.inf, -np.inf, True, 2**64, [1, 2], np.ones(3), 1 + 1j,
                  object(), {"a": 1})


def _argument_targets(tmp_path):
    """Each entry point with its good arguments (tiny, so a finite run is quick once compiled)."""
    from deeplinear.evidence import log_evidence
    from deeplinear.renormalized import renormalized_kernel
    from deeplinear.sweep import run_sweep

    rng = np.random.default_rng(1)
    data = dl.RegressionData.linear(rng.normal(size=(5, 4)), rng.normal(size=(5, 2)))
    finite = dl.FiniteWidthPrior((3,), 2)
    nngp = dl.ModelSpec(dl.NNGPPrior(2), noise_variance=0.5)
    return {
        "log_evidence": (lambda **kw: log_evidence(data, **kw), {
            "prior": finite, "lambda_star": 1.0, "noise_variance": 0.5, "noise_model": "scalar",
            "method": "ais", "num_particles": 8, "num_temperatures": 4, "num_leapfrog": 2, "num_moves": 1,
            "pilot_particles": 8, "key": 0, "progress_bar": False}),
        "renormalized_kernel": (lambda **kw: renormalized_kernel(data, **kw), {
            "prior": finite, "lambda_star": 1.0, "noise_variance": 0.5, "noise_model": "scalar",
            "noise_correlation": None, "intercept": None, "max_iterations": 50}),
        "run_sweep": (run_sweep, {
            "tasks": {"a": (data, nngp), "b": (data, nngp)}, "executor": None, "key": 0,
            "checkpoint": None, "keep_datatrees": False, "num_warmup": 5, "num_samples": 5, "num_chains": 1,
            "target_accept_prob": 0.8, "max_tree_depth": 3}),
    }


def _hostile_tasks(rng, data, spec):
    """``tasks`` values a hostile user might pass to run_sweep."""
    choices = ({}, [], "abc", {"a": (data,)}, {"a": (data, "spec")}, {1: (data, spec)}, {"a": ("data", spec)},
               {"a": [data, spec]}, {"": (data, spec)}, {"a/b": (data, spec)}, ((data, spec),))
    return choices[rng.integers(len(choices))]


def _finite_outcome(name, result, caught):
    if name == "log_evidence":
        assert np.isfinite(result.log_evidence), "non-finite log evidence"
        honest_nan = any(issubclass(w.category, dl.ConvergenceWarning) for w in caught)
        assert np.isfinite(result.standard_error) or honest_nan, "NaN standard error without a warning"
    elif name == "renormalized_kernel":
        assert np.all(np.isfinite(result.q)) and np.isfinite(result.action), "non-finite renormalized kernel"
    else:
        assert not result.failures, f"failed fits {result.failures}"
        not_applicable = ["max_rhat", "min_ess_bulk"]  # NaN by design: a fixed NNGP samples nothing
        numbers = result.table.select_dtypes("number").drop(columns=not_applicable)
        assert len(result.table) and np.all(np.isfinite(numbers.to_numpy(np.float64))), "non-finite sweep table"


@pytest.mark.filterwarnings("ignore::deeplinear.PrecisionWarning", "ignore::deeplinear.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_random_arguments_of_evidence_kernel_and_sweeps_end_in_a_clear_error_or_finite_results(tmp_path,
                                                                                                  monkeypatch):
    """Issue 28: each argument of log_evidence, renormalized_kernel and run_sweep replaced at random
    by a value of the wrong type, sign, size or finiteness ends in a ValueError/TypeError raised
    before JAX traces anything, or in finite results: never a NaN or another library's exception."""
    monkeypatch.chdir(tmp_path)  # a string checkpoint names a folder here
    rng = np.random.default_rng(ARGUMENT_SEED)
    targets = _argument_targets(tmp_path)
    outcomes = collections.Counter()
    traces = _Traces()
    jax.monitoring.register_event_duration_secs_listener(traces)
    try:
        for i in range(NUM_ARGUMENT_COMBINATIONS):
            name = list(targets)[rng.integers(len(targets))]
            call, good = targets[name]
            kwargs = dict(good)
            for arg in good:
                if rng.random() < REPLACE_PROBABILITY:
                    if arg == "tasks":
                        data, spec = good["tasks"]["a"]
                        kwargs[arg] = _hostile_tasks(rng, data, spec)
                    else:
                        kwargs[arg] = HOSTILE_VALUES[rng.integers(len(HOSTILE_VALUES))]
            if kwargs.get("checkpoint") is not None and isinstance(kwargs["checkpoint"], str) and kwargs["checkpoint"]:
                kwargs["checkpoint"] = f"{kwargs['checkpoint']}-{i}"  # a fresh folder per combination
            replaced = {k: v for k, v in kwargs.items() if v is not good[k]}
            before = traces.count
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    result = call(**kwargs)
                except (ValueError, TypeError) as err:
                    assert traces.count == before, (f"combination {i} {name} {replaced}: refused after JAX traced "
                                                    f"something: {err}")
                    named = [arg for arg in replaced if arg in str(err)]
                    assert named, f"combination {i} {name} {replaced}: the error names none of them: {err}"
                    outcomes[f"{name} refused"] += 1
                    continue
                except Exception as err:
                    raise AssertionError(f"combination {i} {name} {replaced}: {type(err).__name__} escaped: "
                                         f"{err}") from err
            try:
                _finite_outcome(name, result, caught)
            except AssertionError as err:
                raise AssertionError(f"combination {i} {name} {replaced}: {err}") from None
            outcomes[f"{name} finite"] += 1
    finally:
        jax.monitoring.unregister_event_duration_listener(traces)
    print(f"\n{NUM_ARGUMENT_COMBINATIONS} hostile argument combinations: {dict(outcomes)}")
    for name in targets:  # each entry point both refused and ran
        assert outcomes[f"{name} refused"] > 0 and outcomes[f"{name} finite"] > 0, dict(outcomes)
