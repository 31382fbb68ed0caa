"""Hostile use (issue 12): every case found by hostile use, by the principle behind it.

``CASES`` is the table of bad arguments: each raises ``ValueError``/``TypeError`` naming the
argument (together with ``tests/test_bad_input.py``). The tests after it cover data safety (the
original file byte-identical afterwards, no stray file), loading damaged files, finite results
where hostile values are still valid, diagnostics, the command line and Ctrl-C.
"""

import os
import warnings

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl
from deeplinear._files import atomic_write, claim
from deeplinear.app.cli import main
from deeplinear.app.tables import Standardizer

RNG = np.random.default_rng(12)
X = RNG.normal(size=(8, 3))  # P = 8 inputs, N0 = 3
Y = RNG.normal(size=(8, 2))  # D = 2
DATA = dl.RegressionData.linear(X, Y)
F = RNG.normal(size=(8, 3))  # features of a user Gram matrix of rank 3 < P
GRAM_DATA = dl.RegressionData.from_gram(F @ F.T, Y)
F_TEST = RNG.normal(size=(2, 3))
NNGP = dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, num_samples=2, num_chains=1)  # exact: no MCMC
MASKED = np.ma.masked_array(X, mask=np.abs(X) > 1.5)
SQUARE = RNG.normal(size=(4, 4))
OTHER_Y = Y + 1.0  # same shapes, different labels


def gram_prediction(cross, test):
    return GRAM_DATA.prediction_kernel(cross_gram=cross, test_gram=test)


CASES = [
    # (callable, exception, fragment naming the argument) -- item 2: magnitudes and consistency
    (lambda: dl.RegressionData.linear(X * 1e30, Y), ValueError, "eigenvalues of the linear kernel"),
    (lambda: dl.RegressionData.linear(X * 1e-30, Y), ValueError, "round to zero"),
    (lambda: dl.RegressionData.linear(X, Y * 1e20), ValueError, "Y: magnitudes up to"),
    (lambda: dl.RegressionData.linear(X, Y * 1e-40), ValueError, "Y: magnitudes down to"),
    (lambda: dl.RegressionData.from_gram(F @ F.T * 1e40, Y), ValueError, "K: magnitudes up to"),
    (lambda: dl.RegressionData.from_gram(F @ F.T * 1e-45, Y), ValueError, "eigenvalues of K"),
    (lambda: NNGP.predict(X[:2] * 1e20), ValueError, "X_test X_test^T"),
    (lambda: NNGP.predict(X[:2] * 1e39), ValueError, "X_test: magnitudes up to"),
    (lambda: gram_prediction(F @ F_TEST.T, -np.eye(2)), ValueError, "Schur complement"),
    (lambda: gram_prediction(F @ F_TEST.T, F_TEST @ F_TEST.T * 0.1), ValueError, "test_gram"),
    (lambda: gram_prediction(RNG.normal(size=(8, 2)), np.eye(2)), ValueError, "null space"),
    (lambda: gram_prediction(F @ F_TEST.T * 1e40, np.eye(2)), ValueError, "cross_gram: magnitudes"),
    (lambda: gram_prediction(F @ F_TEST.T, np.ones(3)), ValueError, "test_gram as a diagonal must have shape (2,)"),
    (lambda: gram_prediction(F @ F_TEST.T, -np.ones(2)), ValueError, "Schur complement"),
    (lambda: gram_prediction(F @ F_TEST.T, np.array([1.0, np.nan])), ValueError, "test_gram contains NaN"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=1e-50), ValueError, "noise_variance = 1e-50"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=1e-37), ValueError, "noise_variance = 1e-37 is too small"),
    (lambda: dl.KroneckerNormal(np.eye(2), 1.0, 1e-50, DATA), ValueError, "noise_variance"),
    (lambda: dl.KroneckerNormal(-np.eye(2), 1.0, 0.5, DATA), ValueError, "positive semi-definite"),
    (lambda: dl.KroneckerNormal(np.full((2, 2), np.nan), 1.0, 0.5, DATA), ValueError, "q must be finite"),
    (lambda: dl.KroneckerNormal(np.eye(2), 1.0, np.array([0.5, 0.5]), DATA), ValueError, "noise_variance"),
    # item 3: seeds that cannot alias
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, key=2**64), ValueError, "key"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, key=2**32), ValueError, "[0, 2**32)"),
    (lambda: dl.NNGPPrior(2).sample_q(-(2**40)), ValueError, "key"),
    (lambda: dl.FiniteWidthPrior((3,), 1).sample_q(np.float64(3.0)), TypeError, "key"),
    # item 5: silent acceptance
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=["a", "a"]), ValueError, "distinct"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=[("a",), ("b",)]), TypeError,
     "output_names[0]"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names="ab"), TypeError, "output_names"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=[None, "b"]), TypeError,
     "output_names[0]"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, output_names=["a", ""]), TypeError,
     "output_names[1]"),
    (lambda: dl.RegressionData.linear(X, Y, rtol=2.0), ValueError, "rtol must be in [0, 1)"),
    (lambda: dl.RegressionData.linear(X, Y, rtol=-1e-3), ValueError, "rtol"),
    (lambda: dl.RegressionData.from_gram(F @ F.T, Y, rtol=1.0), ValueError, "rtol"),
    (lambda: dl.RegressionData.linear(X, Y, rtol="tight"), TypeError, "rtol"),
    (lambda: dl.ProportionalLimitPrior(1.0, 2, num_steps=10**9), ValueError, "num_steps must be at most"),
    (lambda: dl.FiniteWidthPrior({3, 4}, 1), TypeError, "widths"),
    (lambda: dl.FiniteWidthPrior(iter([3, 4]), 1), TypeError, "widths"),
    (lambda: dl.FiniteWidthPrior((w for w in (3, 4)), 1), TypeError, "widths"),
    (lambda: dl.FiniteWidthPrior(np.ones((2, 2), int), 1), ValueError, "widths"),
    (lambda: dl.sample_network_outputs(0, X, {3, 4}, 2, 5), TypeError, "widths"),
    (lambda: dl.RegressionData.linear(MASKED, Y), TypeError, "masked"),
    (lambda: dl.RegressionData.linear(X, np.ma.masked_array(Y, mask=Y > 1)), TypeError, "Y is a masked array"),
    (lambda: dl.RegressionData.linear(X + 1j, Y), TypeError, "complex"),
    (lambda: dl.RegressionData.linear(X, Y.astype(np.complex64)), TypeError, "Y must hold real numbers"),
    (lambda: NNGP.predict(X[:2] + 0j), TypeError, "complex"),
    (lambda: dl.compare_models({"a": NNGP, "b": dl.fit(dl.RegressionData.linear(X, OTHER_Y), dl.NNGPPrior(2),
                                                       noise_variance=0.5, num_samples=2, num_chains=1)}),
     ValueError, "different labels"),
    (lambda: dl.compare_models({"a": NNGP, "b": dl.fit(dl.RegressionData.linear(X * 2, Y), dl.NNGPPrior(2),
                                                       noise_variance=0.5, num_samples=2, num_chains=1)}),
     ValueError, "eigenvalues differ"),
    (lambda: dl.compare_models({"a": NNGP, "b": dl.fit(GRAM_DATA, dl.NNGPPrior(2), noise_variance=0.5,
                                                       num_samples=2, num_chains=1)}),
     ValueError, "different kernels"),
    (lambda: Standardizer.fit(np.ones((1, 3))), ValueError, "at least 2 rows"),
    # item 6: hyperpriors outside the support, before compilation
    (lambda: dl.ModelSpec(dl.ProportionalLimitPrior(1.0, 2), ratio=dist.Cauchy(0.0, 1.0)), ValueError, "ratio"),
    (lambda: dl.ModelSpec(dl.NNGPPrior(2), lambda_star=dist.StudentT(3.0)), ValueError, "lambda_star"),
    (lambda: dl.ModelSpec(dl.NNGPPrior(2), noise_variance=dist.Uniform(-2.0, 2.0)), ValueError, "noise_variance"),
    # item 1: booleans are booleans
    (lambda: dl.save_fit(NNGP, "never.nc", overwrite=1), TypeError, "overwrite"),
    (lambda: dl.save_fit(NNGP, "never.nc", overwrite=None), TypeError, "overwrite"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, log_likelihood=0), TypeError, "log_likelihood"),
    (lambda: dl.fit(DATA, dl.NNGPPrior(2), noise_variance=0.5, progress_bar="yes"), TypeError, "progress_bar"),
    (lambda: dl.save_fit(NNGP, 42), TypeError, "path"),
    (lambda: dl.load_fit(None), TypeError, "path"),
]


@pytest.mark.parametrize("call,exc,fragment", CASES, ids=[f"hostile{i}" for i in range(len(CASES))])
def test_hostile_input_raises_clear_error(call, exc, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value), str(info.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_square_arrays_are_read_as_rows():
    """A square array is ambiguous in shape only: rows are always observations (no guessing),
    exactly as a (P, N0) array with N0 != P; the repr states P and D for a check."""
    data = dl.RegressionData.linear(SQUARE, SQUARE[:, :2])
    assert (data.num_obs, data.num_features, data.num_outputs) == (4, 4, 2)
    np.testing.assert_array_equal(np.asarray(data.inputs), SQUARE.astype(np.float32))
    assert "num_obs=4" in repr(data) and "num_outputs=2" in repr(data)


def test_an_unmasked_masked_array_is_its_data():
    data = dl.RegressionData.linear(np.ma.masked_array(X), Y)
    np.testing.assert_array_equal(np.asarray(data.inputs), X.astype(np.float32))


# --- item 1: data safety -------------------------------------------------------------------


def test_failed_save_leaves_the_original_and_no_stray_file(tmp_path, monkeypatch):
    import xarray as xr

    path = tmp_path / "fit.nc"
    path.write_bytes(b"precious bytes")

    def disk_full(self, target, **kwargs):
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.DataTree, "to_netcdf", disk_full)
    with pytest.raises(OSError, match=f"could not write {path}"):
        dl.save_fit(NNGP, path, overwrite=True)
    assert path.read_bytes() == b"precious bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["fit.nc"]


def test_interrupted_save_leaves_no_stray_file(tmp_path, monkeypatch):
    import xarray as xr

    def interrupted(self, target, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.DataTree, "to_netcdf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dl.save_fit(NNGP, tmp_path / "fit.nc")
    assert not list(tmp_path.iterdir())


def test_save_never_touches_a_users_partial_file(tmp_path):
    (tmp_path / "mine.nc.partial").write_bytes(b"user data")
    dl.save_fit(NNGP, tmp_path / "mine.nc")
    assert (tmp_path / "mine.nc.partial").read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.nc", "mine.nc.partial"]


def test_exclusive_publication_loses_a_race_cleanly(tmp_path):
    """A file that appears while ours is written is kept; ours is refused and removed."""
    path = tmp_path / "out.txt"

    def writer(tmp):
        path.write_text("the other writer's")  # the race: someone claims the name meanwhile
        with open(tmp, "w") as f:
            f.write("ours")

    with pytest.raises(FileExistsError, match=str(path)):
        atomic_write(path, writer)
    assert path.read_text() == "the other writer's"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_save_into_a_missing_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        dl.save_fit(NNGP, tmp_path / "missing" / "fit.nc")


def test_save_refuses_a_non_finite_posterior(tmp_path):
    broken = dl.PosteriorFit(NNGP.datatree.copy(deep=True), NNGP.spec, NNGP.data)
    broken.datatree["posterior"]["Q"].values[0, 0, 0, 0] = np.nan
    assert np.isnan(broken.datatree["posterior"]["Q"].values[0, 0, 0, 0])
    with pytest.raises(ValueError, match="posterior/Q holds NaN"):
        dl.save_fit(broken, tmp_path / "fit.nc")
    assert not list(tmp_path.iterdir())


# --- item 7: loading ----------------------------------------------------------------------------


def _saved(tmp_path, fit=NNGP, name="fit.nc"):
    return dl.save_fit(fit, tmp_path / name)


def _rewrite(tmp_path, edit):
    import xarray as xr

    good = _saved(tmp_path)
    tree = xr.open_datatree(good, engine="h5netcdf").load()
    edit(tree)
    bad = tmp_path / "bad.nc"
    tree.to_netcdf(bad, engine="h5netcdf")
    return bad


def _drop_group(tree):
    del tree["constant_data"]


def _drop_labels(tree):
    tree["constant_data"] = tree["constant_data"].to_dataset().drop_vars("labels")


def _set_attr(name, value):
    def edit(tree):
        tree.attrs[name] = value

    return edit


def _spec_with_three_outputs(tree):
    tree.attrs["deeplinear_model"] = dl.ModelSpec(dl.NNGPPrior(3), noise_variance=0.5).to_json()


def _nan_eigenvalue(tree):
    ds = tree["constant_data"].to_dataset()
    ev = ds["kernel_eigenvalues"].values.copy()
    ev[0] = np.nan
    tree["constant_data"] = ds.assign(kernel_eigenvalues=("rank", ev))


@pytest.mark.parametrize("edit,fragment", [
    (_drop_group, "group 'constant_data' is missing"),
    (_drop_labels, "no variable 'labels'"),
    (_set_attr("deeplinear_model", "{not json"), "model specification cannot be read"),
    (_set_attr("deeplinear_dtype", "int8"), "float32 or float64, got 'int8'"),
    (_spec_with_three_outputs, "num_outputs = 3"),
    (_nan_eigenvalue, "kernel_eigenvalues must hold finite"),
])
def test_load_validates_the_file(edit, fragment, tmp_path):
    bad = _rewrite(tmp_path, edit)
    with pytest.raises(ValueError, match="bad.nc") as info:
        dl.load_fit(bad)
    assert fragment in str(info.value)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_load_names_a_damaged_file(damage, tmp_path):
    good = _saved(tmp_path).read_bytes()
    bad = tmp_path / "bad.nc"
    bad.write_bytes({"empty": b"", "truncated": good[: len(good) // 2], "garbage": os.urandom(4096)}[damage])
    with pytest.raises(ValueError, match="bad.nc cannot be read .*corrupt"):
        dl.load_fit(bad)


def test_a_float64_fit_is_not_silently_loaded_as_float32(tmp_path):
    with jax.enable_x64(True):
        data = dl.RegressionData.linear(X, Y, dtype="float64")
        path = _saved(tmp_path, dl.fit(data, dl.NNGPPrior(2), noise_variance=0.5, num_samples=2, num_chains=1))
    with jax.enable_x64(False), pytest.raises(ValueError, match="float64 fit.*jax_enable_x64"):
        dl.load_fit(path)
    with jax.enable_x64(True):
        assert dl.load_fit(path).data.dtype == np.float64


@pytest.fixture(scope="module")
def inferred_noise_nngp():
    """An NNGP fit with an inferred noise variance: 2 chains, so R-hat is defined."""
    spec = dl.ModelSpec(dl.NNGPPrior(2), noise_variance=dist.HalfNormal(0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value" from R-hat of a constant
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        return dl.fit(DATA, spec, num_warmup=30, num_samples=30, num_chains=2, chain_method="sequential",
                      progress_bar=False)


def test_loaded_hyperpriors_are_rebuilt_and_can_be_rerun(inferred_noise_nngp, tmp_path):
    loaded = dl.load_fit(_saved(tmp_path, inferred_noise_nngp))
    assert isinstance(loaded.spec.noise_variance, dist.HalfNormal)
    assert float(loaded.spec.noise_variance.scale) == pytest.approx(0.7)
    again = dl.fit(loaded.data, loaded.spec, num_warmup=20, num_samples=20, num_chains=1, progress_bar=False)
    assert np.all(np.isfinite(again.draws("noise_variance")))


# --- item 2: hostile values that are valid give finite results, or warn ------------------------


def test_deep_limit_prior_gives_a_finite_model_and_warns_where_q_underflows():
    """Ratio 50 in float32: Q's last direction underflows (a warning), yet the model's log
    density -- what NUTS evaluates -- is finite with argument validation on (it failed NumPyro's
    exact positive-definiteness test before)."""
    import numpyro
    from numpyro.infer.util import log_density

    prior = dl.ProportionalLimitPrior(50.0, 2, num_steps=8)
    with pytest.warns(dl.PrecisionWarning, match="smallest float32"):
        latents = prior.sample_latents(0, ())
        vbar = prior.sample_vbar(0, 4)
    q = vbar @ np.swapaxes(vbar, -1, -2)
    assert np.linalg.eigvalsh(np.asarray(q, np.float64)).min() < 1e-30  # singular in float32
    like = dl.KroneckerNormal(q, 1.0, 0.5, DATA, root=vbar, validate_args=True)
    assert np.all(np.isfinite(np.asarray(like.log_prob(DATA.labels))))
    with numpyro.validation_enabled():
        logp, _ = log_density(dl.ModelSpec(prior, noise_variance=0.5).model, (DATA,), {}, latents)
    assert np.isfinite(float(logp))
    with pytest.warns(dl.PrecisionWarning, match="singular or zero"):
        dl.ProportionalLimitPrior(1e4, 2).sample_q(0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dl.PrecisionWarning)
        dl.ProportionalLimitPrior(1.0, 2).sample_q(0, 3)  # a usual ratio: no warning
        with jax.enable_x64(True):
            dl.ProportionalLimitPrior(50.0, 2).sample_q(0, 3, dtype="float64")  # e^-100 is a float64


def test_finite_width_prior_expected_log_diagonal_matches_its_draws():
    prior = dl.FiniteWidthPrior((3, 4, 5), 2)
    log_d = np.log(np.asarray(prior.sample_vbar(0, 20_000))[..., 1, 1] ** 2)
    se = log_d.std() / np.sqrt(log_d.size)
    assert abs(log_d.mean() - prior.expected_log_last_diagonal()) < 5 * se


def test_interpolation_with_nearly_collinear_inputs_warns():
    base = RNG.normal(size=(6, 1))
    Xc = np.hstack([base + 1e-6 * RNG.normal(size=(6, 1)) for _ in range(6)])
    data = dl.RegressionData.linear(Xc, Y[:6])
    with pytest.warns(dl.PrecisionWarning, match="nearly singular kernel"):
        dl.fit(data, dl.NNGPPrior(2), noise_variance=0.0, num_samples=2, num_chains=1)


def test_non_finite_predictions_are_an_error_not_a_nan():
    """Draws of Q far beyond the data's scale overflow float32 inside the predictive: an error
    naming the quantity and the remedy, never a NaN returned."""
    from deeplinear.predictive import PredictiveMixture

    q = np.broadcast_to(np.eye(2) * 1e30, (3, 2, 2))
    mixture = PredictiveMixture(q, 1e10, 0.5, DATA, DATA.prediction_kernel(X[:2]))
    with pytest.raises(FloatingPointError, match="predictive means and covariances are not finite.*rescale"):
        mixture.covariance()


def test_joint_gram_matrices_of_one_kernel_are_accepted():
    pk = gram_prediction(F @ F_TEST.T, F_TEST @ F_TEST.T)
    assert np.all(np.asarray(pk.residual_gram) >= -1e-5)


def test_standardizer_keeps_columns_near_the_float64_limit():
    A = np.column_stack([1e307 * (1 + RNG.random(10)), RNG.normal(size=10)])
    s = Standardizer.fit(A)
    Z = s.transform(A)
    assert np.all(np.isfinite(Z)) and np.allclose(Z.std(axis=0), 1.0) and np.allclose(Z.mean(axis=0), 0.0)
    C = np.broadcast_to(np.eye(2), (3, 2, 2))
    assert np.all(np.isfinite(s.inverse_sd(C))) and np.all(np.isfinite(s.inverse_mean(np.zeros((3, 2)))))


# --- item 4: diagnostics -----------------------------------------------------------------------


def test_nngp_with_inferred_hyperparameters_has_a_finite_rhat(inferred_noise_nngp):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "invalid value" from R-hat of a constant
        diag = inferred_noise_nngp.diagnostics()
        table = inferred_noise_nngp.summary()
    assert diag.variables == ("noise_variance",) and np.isfinite(diag.max_rhat)
    assert list(table.index) == ["noise_variance"]


def test_sbc_counts_each_divergent_transition_once(monkeypatch):
    """A kernel that marks exactly the first and the last sampling transitions as divergent:
    SBC must count 2 per simulation (reading the state before each step counted the last
    warmup state and missed the last transition)."""
    import deeplinear.sampler
    import deeplinear.sbc

    num_warmup, num_samples = 4, 6
    real_hmc = deeplinear.sampler.hmc

    def marked_hmc(*args, **kwargs):
        init_kernel, sample_kernel = real_hmc(*args, **kwargs)

        def marked(state, **kw):
            new = sample_kernel(state, **kw)
            return new._replace(diverging=(new.i == num_warmup + 1) | (new.i == num_warmup + num_samples))

        return init_kernel, marked

    monkeypatch.setattr(deeplinear.sampler, "hmc", marked_hmc)
    deeplinear.sbc._run_simulations.clear_cache()  # a program compiled earlier would not trace the marked kernel
    data = dl.RegressionData.linear(X, Y[:, :1])
    try:
        res = dl.simulation_based_calibration(
            data, dl.FiniteWidthPrior((2,), 1), noise_variance=0.5, num_simulations=3, num_warmup=num_warmup,
            num_samples=num_samples, thin=2, progress_bar=False,
        )
    finally:
        deeplinear.sbc._run_simulations.clear_cache()  # nor may a later SBC reuse the marked program
    np.testing.assert_array_equal(res.divergences, [2, 2, 2])


# --- the command line (items 1, 2, 3, 5, 8) ------------------------------------------------------

CSV = "a,b,c,y1,y2\n" + "".join(
    f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{r[3]:.6f},{r[4]:.6f}\n" for r in RNG.normal(size=(12, 5))
)
FAST = ["--prior", "nngp", "--noise", "0.5", "--samples", "2", "--chains", "1"]  # exact: no MCMC


def cli(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def _files(tmp_path, text=CSV, name="train.csv"):
    (tmp_path / name).write_text(text)
    return name


@pytest.mark.parametrize("setup,args,fragment", [
    (lambda p: _files(p), ["--inputs", "a,b", "--outputs", "y1,a"], "share the column"),
    (lambda p: _files(p, "a,a,y\n1,2,3\n4,5,6\n7,8,9\n"), ["--inputs", "a", "--outputs", "y"], "more than once"),
    (lambda p: _files(p, "a,b,y\n1,2,3\n"), ["--inputs", "a,b", "--outputs", "y"], "at least 2 rows"),
    (lambda p: _files(p, "a,b,y\n1,2,3\n1,2,4\n1,2,5\n"), ["--inputs", "a,b", "--outputs", "y"], "constant"),
    (lambda p: np.save(p / "train.npy", np.ones((5, 3)) + 1j), ["--inputs", "0,1", "--outputs", "2"], "complex"),
    (lambda p: _files(p), ["--inputs", "a,b,a", "--outputs", "y1"], "more than once"),
    (lambda p: _files(p), ["--inputs", "a,b", "--outputs", "y1", "--noise", "1e-50"], "noise_variance"),
    (lambda p: _files(p), ["--inputs", "a,b", "--outputs", "y1", "--seed", str(2**64)], "seed"),
])
def test_cli_refuses_with_one_line(setup, args, fragment, tmp_path, capsys, monkeypatch):
    setup(tmp_path)
    data = "train.npy" if (tmp_path / "train.npy").exists() else "train.csv"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(["fit", "--data", data, *FAST[:2], *FAST[4:], *args]
                       if "--noise" in args else ["fit", "--data", data, *FAST, *args], tmp_path, capsys, monkeypatch)
    # one line (argparse's own errors add its usage lines before it)
    assert code == 2 and fragment in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 or err.startswith("usage:"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_cli_second_run_into_claimed_files_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    """Two runs into one --output: the second finds the first's claim and stops at once."""
    _files(tmp_path)
    (tmp_path / "out").mkdir()
    claim(tmp_path / "out" / "posterior.nc")  # the first run, still sampling
    import deeplinear.app.fit as app_fit

    monkeypatch.setattr(app_fit, "_fit_one", lambda *a: pytest.fail("sampled although the file is claimed"))
    code, _, err = cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST,
                        "--output", "out"], tmp_path, capsys, monkeypatch)
    assert code == 2 and "posterior.nc already exists" in err
    assert (tmp_path / "out" / "posterior.nc").read_bytes() == b""  # the first run's claim, untouched


def test_cli_same_name_for_two_outputs_writes_nothing(tmp_path, capsys, monkeypatch):
    _files(tmp_path)
    _files(tmp_path, name="test.csv")
    code, _, err = cli(["fit", "--data", "train.csv", "--test", "test.csv", "--inputs", "a,b", "--outputs", "y1",
                        *FAST, "--posterior", "same.out", "--predictions", "same.out"], tmp_path, capsys, monkeypatch)
    assert code == 2 and "different names" in err
    assert not (tmp_path / "same.out").exists()


def test_cli_ctrl_c_is_one_line_exit_130_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    _files(tmp_path)
    import deeplinear.app.fit as app_fit

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(app_fit, "_fit_one", interrupted)
    code, _, err = cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST,
                        "--output", "out"], tmp_path, capsys, monkeypatch)
    assert code == 130 and err.strip() == "deeplinear: interrupted; no partial files were left"
    assert not list((tmp_path / "out").iterdir())  # the claim was released


def test_cli_huge_columns_give_finite_predictions(tmp_path, capsys, monkeypatch):
    """An output column near 1e307 and an input column near 1e307: finite means and standard
    deviations in original units, and the huge input column still matters."""
    import pandas as pd

    rng = np.random.default_rng(5)
    A = rng.normal(size=(15, 3))
    A[:, 0] *= 1e307
    Yc = A[:, :1] / 1e307 + 0.1 * rng.normal(size=(15, 1))
    Yc = np.column_stack([Yc * 1e307, rng.normal(size=15)])
    df = pd.DataFrame(np.column_stack([A, Yc]), columns=["big", "b", "c", "huge_y", "y2"])
    df.iloc[:12].to_csv(tmp_path / "train.csv", index=False)
    df.iloc[12:].to_csv(tmp_path / "test.csv", index=False)
    code, _, err = cli(["fit", "--data", "train.csv", "--test", "test.csv", "--inputs", "big,b,c",
                        "--outputs", "huge_y,y2", *FAST], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert np.all(np.isfinite(pred.to_numpy())), pred
    assert pred["sd_huge_y"].min() > 1e305 and pred["mean_huge_y"].abs().max() > 1e305
    # the prediction follows the big input column (it was not zeroed by an overflowing scale)
    assert np.corrcoef(pred["mean_huge_y"] / 1e307, df["big"].iloc[12:] / 1e307)[0, 1] > 0.5


def test_hostile_case_count():
    """The issue asks for at least 180 hostile cases between the two tables and the tests here."""
    from tests.test_bad_input import CASES as BAD_INPUT_CASES

    assert len(BAD_INPUT_CASES) + len(CASES) >= 180


# --- Issue 28: readers ------------------------------------------------------------------------------

def test_csv_rows_with_a_field_more_than_the_header_are_refused(tmp_path, capsys, monkeypatch):
    """A trailing comma gives a row one field more: pandas makes the first column the index and
    shifts every column. The reader refuses it, naming the line."""
    (tmp_path / "train.csv").write_text("a,b,y1\n1,2,3,\n4,5,6,\n7,8,9,\n1,0,2,\n")
    code, _, err = cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST],
                       tmp_path, capsys, monkeypatch)
    assert code == 2 and "line 2 has 4 fields but the header has 3" in err and "trailing comma" in err


def test_a_string_column_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "train.csv").write_text("a,b,y1\n1,2,3\n4,x5,6\n7,8,9\n1,0,2\n")
    code, _, err = cli(["fit", "--data", "train.csv", "--inputs", "a,b", "--outputs", "y1", *FAST],
                       tmp_path, capsys, monkeypatch)
    assert code == 2 and "column 'b'" in err and "row 3 holds 'x5'" in err


def test_column_lookup_is_linear_in_the_number_of_columns():
    """10^5 columns named one by one: the lookup was quadratic (about ten minutes); it is one pass
    now. Counted, not timed: the number of equality comparisons of names stays O(columns)."""
    from deeplinear.app.tables import Table, column_indices

    budget = 200_000  # comparisons allowed: 2 per column (a quadratic lookup needs about 5e9)

    class CountingName(str):
        comparisons = 0

        def __eq__(self, other):
            CountingName.comparisons += 1
            assert CountingName.comparisons <= budget, "the column lookup compares names quadratically"
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    columns = [CountingName(f"c{i}") for i in range(100_000)]
    table = Table(columns, np.zeros((1, len(columns))))
    spec = ",".join(f"c{i}" for i in range(99_998))
    assert column_indices(table, spec, "inputs") == list(range(99_998))
    assert CountingName.comparisons <= budget == 2 * len(columns)
