"""Saving and loading fits as netCDF (an ArviZ ``xarray.DataTree`` plus what deeplinear needs).

:func:`save_fit` writes the fit's DataTree (every group: posterior, sample_stats,
observed_data, log_likelihood) with an extra ``constant_data`` group holding the prepared
training data (labels, kernel eigenpairs and rotated labels, and the inputs ``X`` for the
linear kernel), and root
attributes describing the prior and the fixed hyperparameters. It never overwrites an
existing file unless ``overwrite=True``. :func:`load_fit` rebuilds a
:class:`~deeplinear.inference.PosteriorFit` from it, ready for ``predict`` (without the
MCMC object). Hyperparameters that had priors are stored as text (their draws are in the
posterior group).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import xarray as xr

from deeplinear.data import KernelEigenbasis, RegressionData
from deeplinear.inference import PosteriorFit
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior

__all__ = ["save_fit", "load_fit"]

_FORMAT = "deeplinear-fit/1"


def _prior_spec(prior) -> dict:
    if isinstance(prior, FiniteWidthPrior):
        return {"kind": "finite", "widths": list(prior.widths), "num_outputs": prior.num_outputs}
    if isinstance(prior, ProportionalLimitPrior):
        return {"kind": "limit", "ratio": float(prior.ratio), "num_outputs": prior.num_outputs,
                "num_steps": prior.num_steps}
    return {"kind": "nngp", "num_outputs": prior.num_outputs}


def _prior_from_spec(spec: dict):
    if spec["kind"] == "finite":
        return FiniteWidthPrior(tuple(spec["widths"]), spec["num_outputs"])
    if spec["kind"] == "limit":
        return ProportionalLimitPrior(spec["ratio"], spec["num_outputs"], spec["num_steps"])
    return NNGPPrior(spec["num_outputs"])


def _hyper_spec(hyper: dict) -> dict:
    out = {}
    for k, v in hyper.items():
        if v is None:
            out[k] = None
        elif isinstance(v, dist.Distribution):
            out[k] = {"prior": repr(v)}
        else:
            out[k] = float(v)
    return out


def save_fit(result: PosteriorFit, path, *, overwrite: bool = False) -> Path:
    """Write ``result`` to a netCDF file at ``path`` (HDF5-based, via ``h5netcdf``).

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false.
    """
    if not isinstance(result, PosteriorFit):
        raise TypeError(f"result must be a PosteriorFit, got {type(result).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {path!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if path.is_dir():
        raise ValueError(f"path {path} is a directory; give a file name such as fit.nc")
    dt = result.datatree.copy()
    data = result.data
    # every leaf of RegressionData, so the loaded fit predicts bit for bit the same
    basis = data.basis
    arrays = {
        "labels": (("output", "obs"), np.asarray(data.labels)),
        "rotated_labels": (("output", "rank"), np.asarray(data.rotated_labels)),
        "null_energy": ((), np.asarray(data.null_energy)),
        "kernel_eigenvalues": (("rank",), np.asarray(basis.eigenvalues)),
        "kernel_eigenvectors": (("obs", "rank"), np.asarray(basis.eigenvectors)),
    }
    if data.kernel_kind == "linear":
        arrays["X"] = (("feature", "obs"), np.asarray(data.inputs))
        arrays["input_projection"] = (("rank", "feature"), np.asarray(basis.input_projection))
    const = xr.Dataset(arrays)
    const.attrs["kernel"] = data.kernel_kind
    dt["constant_data"] = xr.DataTree(const)
    dt.attrs.update({
        "deeplinear_format": _FORMAT,
        "deeplinear_prior": json.dumps(_prior_spec(result.prior)),
        "deeplinear_hyperparameters": json.dumps(_hyper_spec(result.hyperparameters)),
        "deeplinear_dtype": str(np.dtype(data.dtype)),
    })
    tmp = path.with_name(path.name + ".partial")
    dt.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path)  # never leave a half-written file under the final name
    return path


def load_fit(path) -> PosteriorFit:
    """Read a fit written by :func:`save_fit`. The result has ``mcmc=None``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    dt = xr.open_datatree(path, engine="h5netcdf").load()
    if dt.attrs.get("deeplinear_format") != _FORMAT:
        raise ValueError(f"{path} was not written by deeplinear.save_fit (format {_FORMAT})")
    prior = _prior_from_spec(json.loads(dt.attrs["deeplinear_prior"]))
    hyper = json.loads(dt.attrs["deeplinear_hyperparameters"])
    dtype = np.dtype(dt.attrs["deeplinear_dtype"])
    const = dt["constant_data"].to_dataset()

    def arr(name):
        return jnp.asarray(const[name].values, dtype) if name in const else None

    basis = KernelEigenbasis(arr("kernel_eigenvalues"), arr("kernel_eigenvectors"), arr("input_projection"))
    data = RegressionData(basis, arr("labels"), arr("rotated_labels"), arr("null_energy"), arr("X"))
    tree = dt.copy()
    del tree["constant_data"]
    for key in ("deeplinear_format", "deeplinear_prior", "deeplinear_hyperparameters", "deeplinear_dtype"):
        tree.attrs.pop(key, None)
    return PosteriorFit(tree, prior, data, hyper, mcmc=None)
