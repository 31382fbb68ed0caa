"""Fits survive a netCDF round trip with nothing lost, and files are never overwritten silently."""

import os
import stat
import warnings
from pathlib import Path

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


def _limit_fit():
    rng = np.random.default_rng(0)
    data = dl.RegressionData.linear(rng.normal(size=(9, 4)), rng.normal(size=(9, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.ConvergenceWarning)
        return dl.fit(data, dl.ProportionalLimitPrior(1.0, 2, 8), ratio=dist.LogNormal(0.0, 1.0),
                      noise_variance=0.3, num_warmup=30, num_samples=30, num_chains=2, key=1)


@pytest.fixture(scope="module", params=["float32", "float64"])
def limit_fit(request):
    """One fit per precision for the whole module (the x64 mode is entered again by each test)."""
    with jax.enable_x64(request.param == "float64"):
        yield _limit_fit()


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 60 draws: PSIS k is high
def test_round_trip_linear_kernel(limit_fit, tmp_path):
    with jax.enable_x64(limit_fit.data.dtype == np.float64):
        path = dl.save_fit(limit_fit, tmp_path / "fit.nc")
        loaded = dl.load_fit(path)
        _assert_same_tree(limit_fit.datatree, loaded.datatree)
        assert loaded.prior == limit_fit.prior and loaded.spec.to_dict() == limit_fit.spec.to_dict()
        assert loaded.data.dtype == limit_fit.data.dtype
        Xt = np.random.default_rng(1).normal(size=(3, 4))
        np.testing.assert_array_equal(np.asarray(loaded.predict(Xt).mean), np.asarray(limit_fit.predict(Xt).mean))
        assert loaded.spec.noise_variance == 0.3
        assert isinstance(loaded.spec.ratio, dist.LogNormal) and float(loaded.spec.ratio.scale) == 1.0
        np.testing.assert_allclose(dl.loo(loaded).elpd, dl.loo(limit_fit).elpd)


def test_round_trip_gram_kernel_exact_nngp(tmp_path):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        F = rng.normal(size=(7, 3))
        data = dl.RegressionData.from_gram(F @ F.T, rng.normal(size=(1, 7)).T)
        fit = dl.fit(data, dl.NNGPPrior(1), noise_variance=0.5, num_samples=4, num_chains=1)
        loaded = dl.load_fit(dl.save_fit(fit, tmp_path / "nngp.nc"))
        _assert_same_tree(fit.datatree, loaded.datatree)
        Ft = rng.normal(size=(2, 3))
        a = fit.predict(cross_gram=F @ Ft.T, test_gram=Ft @ Ft.T)
        b = loaded.predict(cross_gram=F @ Ft.T, test_gram=Ft @ Ft.T)
        np.testing.assert_allclose(np.asarray(a.covariance()), np.asarray(b.covariance()), rtol=1e-12)


def test_never_overwrites_without_asking(limit_fit, tmp_path):
    fit = limit_fit
    path = tmp_path / "fit.nc"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        dl.save_fit(fit, path)
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        dl.save_fit(fit, path, overwrite="no")
    assert path.read_text() == "precious"
    (tmp_path / "fit.nc.partial").write_text("mine")  # a user's file with the old temporary name
    dl.save_fit(fit, path, overwrite=True)
    assert dl.load_fit(path).datatree["posterior"]["Q"].shape == fit.datatree["posterior"]["Q"].shape
    assert (tmp_path / "fit.nc.partial").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.nc", "fit.nc.partial"]  # no temporary left


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        dl.load_fit(tmp_path / "missing.nc")
    import xarray as xr

    other = tmp_path / "other.nc"
    xr.DataTree(xr.Dataset({"a": ("x", np.arange(3))})).to_netcdf(other, engine="h5netcdf")
    with pytest.raises(ValueError, match="not written by deeplinear"):
        dl.load_fit(other)


def test_load_refuses_files_of_the_column_layout(tmp_path):
    import xarray as xr

    old = tmp_path / "old.nc"
    tree = xr.DataTree(xr.Dataset({"a": ("x", np.arange(3))}))
    tree.attrs["deeplinear_format"] = "deeplinear-fit/1"
    tree.to_netcdf(old, engine="h5netcdf")
    with pytest.raises(ValueError, match="older deeplinear .*refit and save again"):
        dl.load_fit(old)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(limit_fit, tmp_path, umask, mode):
    """Issue 28: save_fit and every atomic write publish the mode open(path, "w") would give
    (mkstemp's 0o600 kept colleagues on shared storage from reading a posterior)."""
    from deeplinear._files import atomic_write, claim

    old = os.umask(umask)
    try:
        saved = dl.save_fit(limit_fit, tmp_path / "fit.nc")
        written = atomic_write(tmp_path / "table.csv", lambda p: Path(p).write_text("a\n1\n"))
        claim(tmp_path / "claimed")
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (saved, written, tmp_path / "claimed", tmp_path / "plain")}
    assert modes == dict.fromkeys(modes, mode)
