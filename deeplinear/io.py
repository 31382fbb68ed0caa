"""Saving and loading fits as netCDF (an ArviZ ``xarray.DataTree`` plus what deeplinear needs).

:func:`save_fit` writes the fit's DataTree (every group: posterior, sample_stats,
observed_data, log_likelihood) with an extra ``constant_data`` group holding the prepared
training data (labels ``(obs, output)``, kernel eigenpairs and rotated labels, and the inputs
``X`` ``(obs, feature)`` for the linear kernel), and root attributes holding the
:class:`~deeplinear.models.ModelSpec` as JSON (:meth:`~deeplinear.models.ModelSpec.to_json`) and
the precision. It never overwrites an existing file unless ``overwrite=True``, and writes
through a fresh temporary file in the same folder that is renamed into place (atomic) or
removed on failure. :func:`load_fit` rebuilds a :class:`~deeplinear.inference.PosteriorFit` from
it, ready for ``predict`` (without the MCMC object).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import xarray as xr

from deeplinear._validation import check_bool
from deeplinear.data import KernelEigenbasis, RegressionData
from deeplinear.inference import PosteriorFit
from deeplinear.models import ModelSpec

__all__ = ["save_fit", "load_fit"]

FORMAT = "deeplinear-fit/2"  # 2: rows are observations, the model as a ModelSpec
_ATTRS = ("deeplinear_format", "deeplinear_model", "deeplinear_dtype")


def save_fit(result: PosteriorFit, path, *, overwrite: bool = False) -> Path:
    """Write ``result`` to a netCDF file at ``path`` (HDF5-based, via ``h5netcdf``).

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is not ``True``, and
    ``ValueError`` before writing anything if a hyperparameter prior cannot be written down
    (:meth:`~deeplinear.models.ModelSpec.to_dict`).
    """
    if not isinstance(result, PosteriorFit):
        raise TypeError(f"result must be a PosteriorFit, got {type(result).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {path!r}")
    overwrite = check_bool("overwrite", overwrite)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {path} is a directory; give a file name such as fit.nc")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    model_json = result.spec.to_json()
    dt = result.datatree.copy()
    data = result.data
    basis = data.basis
    arrays = {
        "labels": (("obs", "output"), np.asarray(data.labels)),
        "rotated_labels": (("rank", "output"), np.asarray(data.rotated_labels)),
        "null_energy": ((), np.asarray(data.null_energy)),
        "kernel_eigenvalues": (("rank",), np.asarray(basis.eigenvalues)),
        "kernel_eigenvectors": (("obs", "rank"), np.asarray(basis.eigenvectors)),
    }
    if data.kernel_kind == "linear":
        arrays["X"] = (("obs", "feature"), np.asarray(data.inputs))
        arrays["input_projection"] = (("feature", "rank"), np.asarray(basis.input_projection))
    const = xr.Dataset(arrays)
    const.attrs["kernel"] = data.kernel_kind
    dt["constant_data"] = xr.DataTree(const)
    dt.attrs.update({
        "deeplinear_format": FORMAT,
        "deeplinear_model": model_json,
        "deeplinear_dtype": str(np.dtype(data.dtype)),
    })
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        dt.to_netcdf(tmp, engine="h5netcdf")
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} appeared while writing; pass overwrite=True to replace it")
        os.replace(tmp, path)  # never a half-written file under the final name
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_fit(path) -> PosteriorFit:
    """Read a fit written by :func:`save_fit`. The result has ``mcmc=None``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    dt = xr.open_datatree(path, engine="h5netcdf").load()
    found = dt.attrs.get("deeplinear_format")
    if found != FORMAT:
        if isinstance(found, str) and found.startswith("deeplinear-fit/"):
            raise ValueError(
                f"{path} was written by an older deeplinear ({found}, inputs as columns); this version reads "
                f"{FORMAT}: refit and save again"
            )
        raise ValueError(f"{path} was not written by deeplinear.save_fit (format {FORMAT})")
    spec = ModelSpec.from_json(dt.attrs["deeplinear_model"])
    dtype = np.dtype(dt.attrs["deeplinear_dtype"])
    const = dt["constant_data"].to_dataset()

    def arr(name):
        return jnp.asarray(const[name].values, dtype) if name in const else None

    basis = KernelEigenbasis(arr("kernel_eigenvalues"), arr("kernel_eigenvectors"), arr("input_projection"))
    data = RegressionData(basis, arr("labels"), arr("rotated_labels"), arr("null_energy"), arr("X"))
    tree = dt.copy()
    del tree["constant_data"]
    for key in _ATTRS:
        tree.attrs.pop(key, None)
    return PosteriorFit(tree, spec, data, mcmc=None)
