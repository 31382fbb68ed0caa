"""Saving and loading fits as netCDF (an ArviZ ``xarray.DataTree`` plus what deeplinear needs).

:func:`save_fit` writes the fit's DataTree (every group: posterior, sample_stats,
observed_data, log_likelihood) with an extra ``constant_data`` group holding the prepared
training data (labels ``(obs, output)``, kernel eigenpairs and rotated labels, and the inputs
``X`` ``(obs, feature)`` for the linear kernel), and root attributes holding the
:class:`~deeplinear.models.ModelSpec` as JSON (:meth:`~deeplinear.models.ModelSpec.to_json`) and
the precision. It never overwrites an existing file unless ``overwrite=True``, and writes
through a fresh temporary file in the same folder that is published under the final name in one
step -- exclusively, unless ``overwrite=True`` -- or removed on failure
(:func:`deeplinear._files.atomic_write`). :func:`load_fit` rebuilds a :class:`~deeplinear.inference.PosteriorFit` from
it, ready for ``predict`` (without the MCMC object).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from deeplinear._files import atomic_write
from deeplinear._types import PathLike
from deeplinear._validation import check_bool, check_path
from deeplinear.custom import CustomModel
from deeplinear.data import InterceptTerms, KernelEigenbasis, RegressionData, null_scatter
from deeplinear.inference import PosteriorFit
from deeplinear.models import ModelSpec

__all__ = ["save_fit", "load_fit"]

FORMAT = "deeplinear-fit/2"  # 2: rows are observations, the model as a ModelSpec
_ATTRS = ("deeplinear_format", "deeplinear_model", "deeplinear_dtype")


def save_fit(result: PosteriorFit, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``result`` to a netCDF file at ``path`` (HDF5-based, via ``h5netcdf``).

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is not ``True``, and
    ``ValueError`` before writing anything if a hyperparameter prior cannot be written down
    (:meth:`~deeplinear.models.ModelSpec.to_dict`).
    """
    if not isinstance(result, PosteriorFit):
        raise TypeError(f"result must be a PosteriorFit, got {type(result).__name__}")
    check_path("path", path)
    overwrite = check_bool("overwrite", overwrite)
    result.data.require_rows("save_fit")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path {path} is a directory; give a file name such as fit.nc")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    model_json = result.spec.to_json()
    for name, var in result.datatree["posterior"].to_dataset().data_vars.items():
        if np.issubdtype(var.dtype, np.number) and not np.all(np.isfinite(var.values)):
            raise ValueError(f"the fit's posterior/{name} holds NaN or infinite values; nothing was written to {path}")
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
    atomic_write(path, lambda tmp: dt.to_netcdf(tmp, engine="h5netcdf"), overwrite=overwrite)
    return path


def _read_model(text):
    """The fitted model's description: a :class:`ModelSpec`, or for a fit of your own model
    (``fit(data, model=...)``) a :class:`~deeplinear.custom.CustomModel` without its function."""
    if isinstance(text, str) and text.lstrip().startswith("{") and '"custom_model"' in text:
        return CustomModel.from_dict(json.loads(text))
    return ModelSpec.from_json(text)


def load_fit(path: PathLike) -> PosteriorFit:
    """Read a fit written by :func:`save_fit`.

    The file is validated before anything is built from it: a file that is empty, truncated,
    corrupt or not written by :func:`save_fit`, a missing group or variable, an unreadable model
    specification, a precision other than float32/float64, shapes that do not agree (``P``,
    ``R``, ``D`` of the prior) or non-finite values raise a ``ValueError`` naming ``path``. A float64
    fit needs JAX's 64-bit mode (it is not silently downgraded to float32).
    """
    check_path("path", path)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        tree = xr.open_datatree(path, engine="h5netcdf")
        try:
            dt = tree.load()
        finally:
            tree.close()
    except Exception as err:  # h5py, h5netcdf and xarray raise many types for a damaged file
        raise ValueError(
            f"{path} cannot be read as a netCDF file written by deeplinear.save_fit (empty, truncated or "
            f"corrupt?): {type(err).__name__}: {err}"
        ) from None
    found = dt.attrs.get("deeplinear_format")
    if found != FORMAT:
        if isinstance(found, str) and found.startswith("deeplinear-fit/"):
            raise ValueError(
                f"{path} was written by an older deeplinear ({found}, inputs as columns); this version reads "
                f"{FORMAT}: refit and save again"
            )
        raise ValueError(f"{path} was not written by deeplinear.save_fit (format {FORMAT})")
    try:
        spec = _read_model(dt.attrs.get("deeplinear_model"))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: its model specification cannot be read: {err}") from None
    dtype = _stored_dtype(path, dt.attrs.get("deeplinear_dtype"))
    const = _checked_constant_data(path, dt, spec.num_outputs)

    def arr(name):
        return jnp.asarray(const[name].values, dtype) if name in const else None

    basis = KernelEigenbasis(arr("kernel_eigenvalues"), arr("kernel_eigenvectors"), arr("input_projection"))
    rows = (const["kernel_eigenvectors"].values, const["labels"].values, const["rotated_labels"].values)
    scatter = null_scatter(*rows)
    data = RegressionData(basis, arr("labels"), arr("rotated_labels"), jnp.asarray(scatter, dtype), arr("X"),
                          InterceptTerms.from_rows(*rows, scatter, dtype))
    tree = dt.copy()
    del tree["constant_data"]
    for key in _ATTRS:
        tree.attrs.pop(key, None)
    return PosteriorFit(tree, spec, data)


def _stored_dtype(path, name):
    if name not in ("float32", "float64"):
        raise ValueError(f"{path}: the stored precision must be float32 or float64, got {name!r}")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{path} holds a float64 fit, but JAX's 64-bit mode is off, so it would be silently rounded to "
            "float32; load it with jax.config.update('jax_enable_x64', True) (or inside jax.enable_x64())"
        )
    return np.dtype(name)


_CONSTANT_DIMS = {
    "labels": ("obs", "output"),
    "rotated_labels": ("rank", "output"),
    "null_energy": (),
    "kernel_eigenvalues": ("rank",),
    "kernel_eigenvectors": ("obs", "rank"),
}
_LINEAR_DIMS = {"X": ("obs", "feature"), "input_projection": ("feature", "rank")}


def _checked_constant_data(path, dt, num_outputs: int) -> xr.Dataset:
    """The ``constant_data`` group, every variable present with the right dimensions, sizes that
    agree (``D`` of the prior included), finite values and positive kernel eigenvalues; and the
    posterior's ``Q`` ``(chain, draw, D, D)``, finite."""
    for group in ("posterior", "constant_data"):
        if group not in dt.children:
            raise ValueError(f"{path}: the group {group!r} is missing; not a complete deeplinear fit")
    const = dt["constant_data"].to_dataset()
    kind = const.attrs.get("kernel")
    if kind not in ("linear", "gram"):
        raise ValueError(f"{path}: constant_data has kernel = {kind!r}; expected 'linear' or 'gram'")
    expected = {**_CONSTANT_DIMS, **(_LINEAR_DIMS if kind == "linear" else {})}
    for name, dims in expected.items():
        if name not in const:
            raise ValueError(f"{path}: constant_data has no variable {name!r}; not a complete deeplinear fit")
        var = const[name]
        if var.dims != dims:
            raise ValueError(f"{path}: constant_data/{name} has dimensions {var.dims}, expected {dims}")
        if not np.issubdtype(var.dtype, np.floating) or not np.all(np.isfinite(var.values)):
            raise ValueError(f"{path}: constant_data/{name} must hold finite floating-point values")
    if const.sizes["output"] != num_outputs:
        raise ValueError(
            f"{path}: the labels have D = {const.sizes['output']} outputs but the model's prior has "
            f"num_outputs = {num_outputs}; the file is inconsistent"
        )
    if np.any(const["kernel_eigenvalues"].values <= 0):
        raise ValueError(f"{path}: constant_data/kernel_eigenvalues must be positive")
    post = dt["posterior"].to_dataset()
    if "Q" not in post:
        raise ValueError(f"{path}: the posterior has no variable 'Q'")
    q = post["Q"]
    if q.ndim != 4 or q.shape[2:] != (num_outputs, num_outputs):
        raise ValueError(
            f"{path}: posterior Q has shape {q.shape}, expected (chain, draw, {num_outputs}, {num_outputs})"
        )
    for name, var in post.data_vars.items():
        if np.issubdtype(var.dtype, np.number) and not np.all(np.isfinite(var.values)):
            raise ValueError(f"{path}: posterior/{name} holds NaN or infinite values")
    return const
