"""Fits survive a netCDF round trip with nothing lost, and files are never overwritten silently."""

import warnings

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl


def _assert_same_tree(a, b):
    assert set(a.groups) == set(b.groups)
    assert dict(a.attrs) == dict(b.attrs)
    for g in a.groups:
        da, db = a[g].to_dataset(), b[g].to_dataset()
        assert da.identical(db), g  # values, dims, coords and attributes


@pytest.fixture
def limit_fit(dtype):
    rng = np.random.default_rng(0)
    data = dl.RegressionData.linear(rng.normal(size=(4, 9)), rng.normal(size=(2, 9)), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        return dl.fit(data, dl.ProportionalLimitPrior(1.0, 2, 8), ratio=dist.LogNormal(0.0, 1.0),
                      noise_variance=0.3, num_warmup=30, num_samples=30, num_chains=2, seed=1)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 60 draws: PSIS k is high
def test_round_trip_linear_kernel(limit_fit, tmp_path):
    path = dl.save_fit(limit_fit, tmp_path / "fit.nc")
    loaded = dl.load_fit(path)
    _assert_same_tree(limit_fit.datatree, loaded.datatree)
    assert repr(loaded.prior) == repr(limit_fit.prior)
    assert loaded.data.dtype == limit_fit.data.dtype
    Xt = np.random.default_rng(1).normal(size=(4, 3))
    np.testing.assert_array_equal(np.asarray(loaded.predict(Xt).mean), np.asarray(limit_fit.predict(Xt).mean))
    assert loaded.hyperparameters["noise_variance"] == 0.3
    assert "LogNormal" in loaded.hyperparameters["ratio"]["prior"]
    np.testing.assert_allclose(dl.loo(loaded).elpd, dl.loo(limit_fit).elpd)


def test_round_trip_gram_kernel_exact_nngp(tmp_path):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        F = rng.normal(size=(7, 3))
        data = dl.RegressionData.from_gram(F @ F.T, rng.normal(size=(1, 7)))
        fit = dl.fit(data, dl.NNGPPrior(1), noise_variance=0.5, num_samples=4, num_chains=1)
        loaded = dl.load_fit(dl.save_fit(fit, tmp_path / "nngp.nc"))
        _assert_same_tree(fit.datatree, loaded.datatree)
        Ft = rng.normal(size=(2, 3))
        a = fit.predict(cross_gram=F @ Ft.T, test_gram=Ft @ Ft.T)
        b = loaded.predict(cross_gram=F @ Ft.T, test_gram=Ft @ Ft.T)
        np.testing.assert_allclose(np.asarray(a.covariance()), np.asarray(b.covariance()), rtol=1e-12)


def test_never_overwrites_without_asking(limit_fit, tmp_path):
    path = tmp_path / "fit.nc"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        dl.save_fit(limit_fit, path)
    assert path.read_text() == "precious"
    dl.save_fit(limit_fit, path, overwrite=True)
    assert dl.load_fit(path).datatree["posterior"]["Q"].shape == limit_fit.datatree["posterior"]["Q"].shape


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        dl.load_fit(tmp_path / "missing.nc")
    import xarray as xr

    other = tmp_path / "other.nc"
    xr.DataTree(xr.Dataset({"a": ("x", np.arange(3))})).to_netcdf(other, engine="h5netcdf")
    with pytest.raises(ValueError, match="not written by deeplinear"):
        dl.load_fit(other)
