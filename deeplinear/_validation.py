"""Argument validation for the whole public API, in one place.

Every public entry point validates its arguments here, *before* any tracing, compilation or
sampling, and raises ``ValueError``/``TypeError`` naming the argument, the value received and
what is allowed. Arrays follow the rows convention: one observation per row (inputs
``(P, N0)``, labels ``(P, D)``); see :mod:`deeplinear.data` for how it maps to theory.md's
columns.
"""

from __future__ import annotations

import math
import numbers
import sys

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "describe",
    "is_concrete",
    "check_bool",
    "check_positive_int",
    "check_sample_shape",
    "check_widths",
    "check_ratio",
    "check_positive_scalar",
    "check_probability",
    "check_key",
    "raw_key",
    "check_dtype",
    "check_real_matrix",
    "check_inputs",
    "check_labels",
    "check_gram",
    "check_instance",
    "check_hyperprior",
    "check_noise_for_data",
    "check_noise_covariance",
    "check_one_draw_noise",
    "check_intercept",
    "check_draw_hyperparameters",
    "check_representable",
    "check_output_names",
    "check_rtol",
]

MAX_SEED = 2**32  # integer seeds are taken modulo nothing: 0 <= seed < 2**32
MAX_LIMIT_STEPS = 2**20  # time steps of the limit simulator: latents are (K, D) per draw


def describe(value) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, (np.ndarray, jax.Array)):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"{value!r} ({type(value).__name__})"


def is_concrete(value) -> bool:
    """True unless ``value`` is a JAX tracer (inside ``jit``/``grad``/NUTS)."""
    return not isinstance(value, jax.core.Tracer)


def check_bool(name: str, value) -> bool:
    """A real ``bool`` (``"no"``, ``0`` or ``None`` are refused: they would read as a choice)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {describe(value)}")
    return bool(value)


def check_choice(name: str, value, allowed: tuple[str, ...]) -> str:
    """``value`` is one of the strings in ``allowed`` (a ``TypeError`` for a non-string)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, got {describe(value)}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_positive_int(name: str, value, minimum: int = 1, maximum: int | None = None, why: str = "") -> int:
    """Return ``value`` as a Python ``int`` if it is an integer ``>= minimum`` (and ``<= maximum``
    when given; ``why`` says why in the message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            raise TypeError(f"{name} must be an integer, got the float {value!r}; pass {int(value)} instead")
        raise TypeError(f"{name} must be an integer >= {minimum}, got {describe(value)}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}{why}, got {value}")
    return int(value)


def check_sample_shape(sample_shape, name: str = "sample_shape") -> tuple[int, ...]:
    """An ``int`` or tuple of non-negative ``int`` (NumPyro's ``sample_shape``); returned as a tuple."""
    if isinstance(sample_shape, numbers.Integral) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    if not isinstance(sample_shape, (tuple, list)):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {describe(sample_shape)}")
    return tuple(check_positive_int(f"{name}[{i}]", s, minimum=0) for i, s in enumerate(sample_shape))


def check_widths(widths, num_outputs: int | None = None) -> tuple[int, ...]:
    """Hidden widths ``N_1..N_L``: a non-empty sequence of positive integers, each ``>= num_outputs``
    when given (Bartlett factors need ``N_l >= D``; brute-force networks do not)."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, (list, tuple, np.ndarray, jax.Array)):
        # a set has no order and an iterator is consumed by the first look: neither says N_1..N_L
        raise TypeError(f"widths must be a list or tuple of integers N_1..N_L (in order), got {describe(widths)}")
    if isinstance(widths, (np.ndarray, jax.Array)) and widths.ndim != 1:
        raise ValueError(f"widths must be one-dimensional, got shape {widths.shape}")
    widths = tuple(w.item() if isinstance(w, (np.generic, np.ndarray, jax.Array)) else w for w in widths)
    if len(widths) == 0:
        raise ValueError("widths must contain at least one hidden layer width, got an empty sequence")
    out = tuple(check_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths))
    if num_outputs is not None:
        narrow = [(i, w) for i, w in enumerate(out) if w < num_outputs]
        if narrow:
            i, w = narrow[0]
            raise ValueError(
                f"widths[{i}] = {w} is smaller than num_outputs = {num_outputs}: Bartlett factors "
                f"need every hidden width N_l >= D (a narrower layer makes Q singular)"
            )
    return out


def _real_scalar(name: str, value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array)):
        raise TypeError(f"{name} must be {what}, got {describe(value)}")
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name} must be {what}, got dtype {arr.dtype}")
    return float(arr)


def check_ratio(value, name: str = "ratio"):
    """Depth-to-width ratio ``a``: a finite real scalar ``> 0`` (tracers pass unchecked)."""
    if not is_concrete(value):
        return value
    v = _real_scalar(name, value, "a real number > 0")
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {v}")
    return value


def check_positive_scalar(name: str, value, allow_zero: bool = False):
    """A finite real scalar ``> 0`` (or ``>= 0``); tracers pass unchecked."""
    if not is_concrete(value):
        return value
    v = _real_scalar(name, value, "a real number")
    bound = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {bound}, got {v}")
    return value


def check_probability(name: str, value) -> float:
    """A real number strictly between 0 and 1."""
    v = _real_scalar(name, value, "a number in (0, 1)")
    if not 0 < v < 1:
        raise ValueError(f"{name} must be in (0, 1), got {v}")
    return v


def check_key(key, name: str = "key"):
    """A JAX PRNG key -- typed (``jax.random.key``) or raw ``uint32[2]`` (``PRNGKey``) -- or an
    integer seed in ``[0, 2**32)``, which becomes ``jax.random.key(seed)``."""
    if _is_seed(key):
        return jax.random.key(_checked_seed(key, name))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return key
    raise TypeError(
        f"{name} must be a single JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)) "
        f"or an integer seed, got {describe(key)}"
    )


def _is_seed(key) -> bool:
    return isinstance(key, numbers.Integral) and not isinstance(key, bool)


def _checked_seed(key, name: str) -> int:
    if not 0 <= int(key) < MAX_SEED:
        raise ValueError(f"{name} as an integer seed must be in [0, 2**32), got {int(key)}")
    return int(key)


def raw_key(key, name: str = "key"):
    """:func:`check_key`, returned as a raw ``uint32[2]`` key (what NumPyro's drivers take).

    An integer seed ``s`` gives ``[0, s]`` as a NumPy array under JAX's default threefry
    implementation (what ``jax.random.key_data(jax.random.key(s))`` holds for ``s < 2**32``),
    built on the host: no program is compiled for it."""
    if _is_seed(key) and jax.config.jax_default_prng_impl == "threefry2x32":
        return np.array([0, _checked_seed(key, name)], np.uint32)
    key = check_key(key, name)
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def check_dtype(dtype, name: str = "dtype"):
    """A floating dtype, canonicalized (float64 -> float32 unless ``jax_enable_x64``)."""
    if dtype is None:
        return jax.dtypes.canonicalize_dtype(jnp.float64)
    try:
        dt = np.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"{name} must be a floating dtype (float32 or float64), got {dtype!r}") from err
    if not np.issubdtype(dt, np.floating) or dt.itemsize < 4:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return jax.dtypes.canonicalize_dtype(dt)


def check_real_matrix(value, name: str, layout: str):
    """A non-empty, finite, real 2-D array (lists and pandas objects accepted); ``layout``
    describes the shape in messages, e.g. ``"(P, N0), one input per row"``."""
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.is_masked(value):
            raise TypeError(
                f"{name} is a masked array with masked entries; deeplinear does not drop or fill them "
                f"silently: remove those rows or fill them (value.filled(...)) first"
            )
        value = np.ma.getdata(value)
    if hasattr(value, "to_numpy") and not isinstance(value, (np.ndarray, jax.Array)):
        value = value.to_numpy()  # pandas DataFrame / Series
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError:
            raise ValueError(
                f"{name} must be a rectangular array of shape {layout}; its rows have different lengths"
            ) from None
    if not isinstance(value, (np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be an array of shape {layout}, got {describe(value)}")
    if np.issubdtype(value.dtype, np.complexfloating):
        raise TypeError(
            f"{name} must hold real numbers, got complex dtype {value.dtype} (the imaginary part would be lost)"
        )
    if value.dtype == object or not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.ndim != 2:
        raise ValueError(f"{name} must have rank 2, shape {layout}, got shape {value.shape}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {value.shape}")
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


def check_inputs(X, name: str = "X", num_features: int | None = None) -> np.ndarray:
    """Inputs of shape ``(P, N0)``, one input per row, as float64 NumPy. With ``num_features``
    the number of columns must be ``N0``; a transposed array is named as such."""
    X = check_real_matrix(X, name, "(P, N0), one input per row")
    if num_features is not None and X.shape[1] != num_features:
        hint = f" (it looks transposed: pass {name}.T)" if X.shape[0] == num_features else ""
        raise ValueError(
            f"{name} must have shape (P*, N0) with N0 = {num_features} columns (features), got {X.shape}{hint}"
        )
    return np.asarray(X, np.float64)


def check_labels(Y, num_obs: int | None = None, num_outputs: int | None = None, name: str = "Y") -> np.ndarray:
    """Labels of shape ``(P, D)``, one observation per row, as float64 NumPy. ``num_obs`` and
    ``num_outputs``, when given, fix ``P`` and ``D``; a transposed array is named as such.
    A 1-D array is refused (pass ``Y[:, None]`` for one output)."""
    if isinstance(Y, (np.ndarray, jax.Array)) and Y.ndim == 1:
        raise ValueError(
            f"{name} must have shape (P, D), got a 1-D array of shape {Y.shape}; for one output pass {name}[:, None]"
        )
    Y = check_real_matrix(Y, name, "(P, D), one observation per row")
    if not _shape_matches(Y.shape, num_obs, num_outputs):
        transposed = _shape_matches(Y.shape[::-1], num_obs, num_outputs)
        hint = f" (it looks transposed: pass {name}.T)" if transposed else ""
        p = num_obs if num_obs is not None else "P"
        d = num_outputs if num_outputs is not None else "D"
        raise ValueError(f"{name} must have shape (P, D) = ({p}, {d}), one observation per row, got {Y.shape}{hint}")
    return np.asarray(Y, np.float64)


def _shape_matches(shape, num_obs, num_outputs) -> bool:
    return (num_obs is None or shape[0] == num_obs) and (num_outputs is None or shape[1] == num_outputs)


def check_gram(K, name: str = "K", shape: tuple | None = None, symmetric: bool = True) -> np.ndarray:
    """A finite real matrix as float64 NumPy; if ``symmetric``, square and symmetric (PSD is
    checked where the eigenvalues are computed)."""
    K = np.asarray(check_real_matrix(K, name, "(P, P)" if symmetric else "(P, P*)"), np.float64)
    if shape is not None and K.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {K.shape}")
    if symmetric:
        if K.shape[0] != K.shape[1]:
            raise ValueError(f"{name} must be a square Gram matrix, got shape {K.shape}")
        scale = max(np.abs(K).max(), np.finfo(np.float64).tiny)
        asym = np.abs(K - K.T).max() / scale
        if asym > 1e-6:
            raise ValueError(f"{name} must be symmetric, but max|K - K^T| / max|K| = {asym:.2e}")
    return K


def check_hyperprior(name: str, prior):
    """A NumPyro distribution over one positive scalar: ``batch_shape == event_shape == ()`` and a
    support bounded below by a number ``>= 0`` (``LogNormal``, ``HalfNormal``, ``Gamma``,
    ``Uniform(0, b)``, ...). Checked before compilation, so NUTS never starts from an impossible
    value."""
    if prior.batch_shape != () or prior.event_shape != ():
        raise ValueError(
            f"{name} must be a prior over one scalar, got a {type(prior).__name__} with batch shape "
            f"{prior.batch_shape} and event shape {prior.event_shape}"
        )
    lower = getattr(prior.support, "lower_bound", None)
    try:
        lower = float(np.asarray(lower)) if lower is not None else None
    except (TypeError, ValueError):
        lower = None
    if lower is None or not lower >= 0:
        raise ValueError(
            f"{name} must be a prior over positive values (support bounded below by 0, e.g. LogNormal, "
            f"HalfNormal, Gamma), got {type(prior).__name__} with support {prior.support}"
        )
    return prior


def check_path(name: str, value, what: str = "file"):
    """``value`` names a ``what`` (``"file"`` or ``"folder"``): a non-empty ``str`` or ``os.PathLike``;
    returned as a :class:`pathlib.Path`."""
    import os
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise TypeError(f"{name} must be a {what} path (a non-empty str or os.PathLike), got {describe(value)}")
    return Path(value)


def check_instance(name: str, value, cls, hint: str = ""):
    """``value`` is an instance of ``cls`` (a ``TypeError`` naming ``name`` otherwise); ``hint``
    says how to make one."""
    if not isinstance(value, cls):
        how = f" ({hint})" if hint else ""
        raise TypeError(f"{name} must be a deeplinear.{cls.__name__}{how}, got {type(value).__name__}")
    return value


def check_draw_hyperparameters(lambda_star, noise_variance, num_draws: int, data, noise_covariance=None):
    """Per-draw hyperparameters: scalars or ``(S,)`` arrays, finite, ``lambda_star > 0`` and
    ``noise_variance >= 0`` (``0`` needs a full-rank kernel); tracers pass unchecked. Returns both
    broadcast to ``(S,)`` in the data's precision. With ``noise_covariance`` (``(D, D)`` or
    ``(S, D, D)``, :func:`check_noise_covariance`; then ``noise_variance`` must be None) the
    second is the noise covariance broadcast to ``(S, D, D)``."""
    if noise_covariance is not None:
        if noise_variance is not None:
            raise ValueError("give noise_variance (noise sigma^2 I) or noise_covariance, not both")
        lam = check_draw_hyperparameters(lambda_star, 1.0, num_draws, data)[0]
        check_noise_covariance(noise_covariance, data, num_draws=num_draws)
        D = data.num_outputs
        return lam, jnp.broadcast_to(jnp.asarray(noise_covariance, data.dtype), (num_draws, D, D))
    out = []
    for name, value in (("lambda_star", lambda_star), ("noise_variance", noise_variance)):
        if is_concrete(value):
            arr = np.asarray(value, np.float64)
            if arr.shape not in ((), (num_draws,)):
                raise ValueError(f"{name} must be a scalar or have shape ({num_draws},), got {arr.shape}")
            bound = "> 0" if name == "lambda_star" else ">= 0"
            if not np.all(np.isfinite(arr)) or np.any(arr < 0) or (name == "lambda_star" and np.any(arr == 0)):
                raise ValueError(f"{name} must be finite and {bound} in every draw")
            if name == "noise_variance" and np.any(arr == 0):
                check_noise_for_data(0.0, data)
        out.append(jnp.broadcast_to(jnp.asarray(value, data.dtype), (num_draws,)))
    return tuple(out)


def check_noise_covariance(value, data, name: str = "noise_covariance", num_draws: int | None = None):
    r"""An output-noise covariance :math:`\Sigma_\varepsilon`: shape ``(D, D)`` (or ``(S, D, D)`` with
    ``num_draws = S``; any batch ``(..., D, D)`` when ``num_draws`` is None), finite, symmetric
    and positive definite in float64, every entry representable in the data's precision. Tracers
    pass unchecked. A ``ValueError`` names ``name``, the shape or value and what is allowed."""
    D = data.num_outputs
    if not is_concrete(value):
        return value
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a ({D}, {D}) array (a noise covariance), got {describe(value)}") from None
    allowed = "(D, D)" if num_draws is None else f"({D}, {D}) or ({num_draws}, {D}, {D})"
    if arr.ndim < 2 or arr.shape[-2:] != (D, D) or (num_draws is not None and arr.shape not in (
            (D, D), (num_draws, D, D))):
        raise ValueError(f"{name} must have shape {allowed} for D = {D} outputs, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got NaN or infinite entries")
    scale = np.max(np.abs(arr), axis=(-2, -1), keepdims=True)
    if np.any(np.abs(arr - np.swapaxes(arr, -1, -2)) > 1e-6 * scale):
        raise ValueError(f"{name} must be symmetric (a covariance matrix)")
    eig = np.linalg.eigvalsh((arr + np.swapaxes(arr, -1, -2)) / 2)
    if np.any(eig.min(-1) <= 0):
        raise ValueError(
            f"{name} must be positive definite (a noise covariance); its smallest eigenvalue is "
            f"{float(eig.min()):.3g}"
        )
    check_representable(name, arr, data.dtype, "rescale the labels (e.g. standardize them) or use float64 "
                        "(jax_enable_x64)", positive=True)
    check_representable(f"the eigenvalues of {name}", eig, data.dtype, "rescale the labels or use float64",
                        positive=True)
    return value


def check_one_draw_noise(noise_variance, noise_covariance, data):
    """One draw's output noise: ``noise_variance`` (a scalar, :func:`check_noise_for_data`) or, with
    ``noise_variance=None``, ``noise_covariance`` ``(D, D)`` (:func:`check_noise_covariance`), as an
    array of the data's precision; giving both is an error."""
    if noise_covariance is None:
        return check_noise_for_data(noise_variance, data)
    if noise_variance is not None:
        raise ValueError("give noise_variance (noise sigma^2 I) or noise_covariance, not both")
    D = data.num_outputs
    noise = jnp.asarray(check_noise_covariance(noise_covariance, data, num_draws=1), data.dtype)
    if noise.ndim != 2:
        raise ValueError(f"noise_covariance must have shape ({D}, {D}) for one draw, got {noise.shape}")
    return noise


def check_intercept(value, num_outputs: int, name: str = "intercept", num_draws: int | None = None):
    """Per-output intercepts: shape ``(..., D)`` (``(D,)`` or ``(S, D)`` with ``num_draws = S``), finite;
    tracers pass unchecked."""
    if not is_concrete(value):
        return value
    try:
        arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of D = {num_outputs} intercepts, got {describe(value)}") from None
    allowed = (f"({num_outputs},)" if num_draws is None else f"({num_outputs},) or ({num_draws}, {num_outputs})")
    if arr.ndim < 1 or arr.shape[-1] != num_outputs or (num_draws is not None and arr.shape not in (
            (num_outputs,), (num_draws, num_outputs))):
        raise ValueError(f"{name} must have shape {allowed} (one intercept per output), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got NaN or infinite entries")
    return value


def check_noise_for_data(noise_variance, data, name: str = "noise_variance", lambda_star=None):
    r"""``sigma^2 >= 0``, a scalar; ``sigma^2 = 0`` (interpolation) needs a full-rank kernel.

    The likelihood's quadratic form :math:`\sum_p \tilde y_p^\top C_p^{-1} \tilde y_p` must not
    overflow the data's precision: it is at most :math:`\|Y\|_F^2/\sigma^2`, or, for
    :math:`\sigma^2 = 0` and a fixed ``lambda_star``, about :math:`\|Y\|_F^2/(\lambda_*\kappa_{\min})`
    (at :math:`Q = I`)."""
    check_positive_scalar(name, noise_variance, allow_zero=True)
    if is_concrete(noise_variance):
        check_representable(
            name, noise_variance, data.dtype, positive=True,
            remedy="rescale the labels (e.g. standardize them) or use float64 (jax_enable_x64)",
        )
    if is_concrete(noise_variance) and is_concrete(data.rotated_labels) and is_concrete(data.null_scatter):
        _check_quadratic_form(name, float(noise_variance), data, lambda_star)
    if is_concrete(noise_variance) and float(noise_variance) == 0 and data.basis.num_null > 0:
        raise ValueError(
            f"{name} = 0 (interpolation) needs an invertible kernel K, but K has rank "
            f"{data.basis.rank} < P = {data.num_obs}; use {name} > 0 or fewer inputs"
        )
    return noise_variance


def check_representable(name: str, values, dtype, remedy: str, *, squared: bool = True, positive: bool = False):
    r"""``values`` (float64) can be computed with in the working ``dtype``.

    The likelihood and predictions square and multiply these quantities, so (``squared=True``)
    every magnitude must stay below :math:`\sqrt{\text{max}}` of ``dtype`` (float32: 1.8e19;
    float64: 1.3e154), else below its max. With ``positive=True`` (kernel eigenvalues, a
    positive noise variance) nonzero values must also stay above the smallest normal number
    (float32: 1.2e-38), else they would round to zero. A ``ValueError`` names ``name``, the
    magnitude, the limit and the ``remedy``.
    """
    info = np.finfo(dtype)
    values = np.abs(np.asarray(values, np.float64))
    if values.size == 0:
        return
    top_allowed = math.sqrt(float(info.max)) if squared else float(info.max)
    top = float(values.max())
    what = f"{name} = {top:.3g} is" if values.size == 1 else f"{name}: magnitudes up to {top:.3g} are"
    if top > top_allowed:
        raise ValueError(
            f"{what} beyond what {np.dtype(dtype).name} can compute with (limit "
            f"{top_allowed:.2g}); {remedy}"
        )
    if positive:
        nonzero = values[values > 0]
        if nonzero.size and float(nonzero.min()) < float(info.tiny):
            low = (
                f"{name}: magnitudes down to {float(nonzero.min()):.3g} are" if values.size > 1 else
                f"{name} = {float(nonzero.min()):.3g} is"
            )
            raise ValueError(
                f"{low} below the smallest {np.dtype(dtype).name} "
                f"number ({float(info.tiny):.2g}), so it would round to zero; {remedy}"
            )


def check_output_names(output_names, num_outputs: int) -> list[str] | None:
    """``None`` or ``D`` distinct, non-empty strings (names of the outputs, written to files)."""
    if output_names is None:
        return None
    if isinstance(output_names, (str, bytes)) or not isinstance(output_names, (list, tuple, np.ndarray)):
        raise TypeError(
            f"output_names must be a list of D = {num_outputs} strings, got {describe(output_names)}"
            + (f" (for one output pass [{output_names!r}])" if isinstance(output_names, str) else "")
        )
    names = list(output_names)
    if len(names) != num_outputs:
        raise ValueError(f"output_names must have D = {num_outputs} entries, got {len(names)}")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n:
            raise TypeError(f"output_names[{i}] must be a non-empty string, got {describe(n)}")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"output_names must be distinct, but {dup!r} appears {names.count(dup)} times")
    return names


def check_rtol(rtol, name: str = "rtol") -> float | None:
    """``None`` (the default rule) or a relative tolerance in ``[0, 1)``: eigenvalues (singular
    values) below ``rtol`` times the largest count as zero."""
    if rtol is None:
        return None
    v = _real_scalar(name, rtol, "a number in [0, 1)")
    if not 0 <= v < 1:
        raise ValueError(
            f"{name} must be in [0, 1) (eigenvalues below {name} * the largest count as zero), got {v}"
        )
    return v


def _check_quadratic_form(name: str, noise_variance: float, data, lambda_star) -> None:
    # ||Y||_F^2 = ||U_R^T Y||_F^2 + the null-space energy: O(R D) from the set-up, not O(P D)
    null = float(np.trace(np.asarray(data.null_scatter, np.float64)))  # numpy: stays concrete inside a trace
    energy = null + float(np.sum(np.asarray(data.rotated_labels, np.float64) ** 2))
    if noise_variance > 0:
        variance, what = noise_variance, name
    elif isinstance(lambda_star, numbers.Real) and not isinstance(lambda_star, bool):
        kappa_min = float(np.min(np.asarray(data.basis.eigenvalues, np.float64)))
        variance, what = float(lambda_star) * kappa_min, "lambda_star * min(kappa)"
    else:
        return
    bound = energy / variance
    limit = float(np.finfo(data.dtype).max) * 1e-3
    if bound > limit:
        raise ValueError(
            f"{name} = {noise_variance:.3g} is too small for these labels in {np.dtype(data.dtype).name}: "
            f"||Y||^2 / ({what}) = {bound:.3g} overflows (limit {limit:.2g}); rescale the labels (e.g. "
            f"standardize them), use a larger {name}, or float64"
        )


def interactive() -> bool:
    """Whether a person is likely watching: in Jupyter (``ipykernel`` loaded) or with standard error
    on a terminal. The default of every ``progress_bar`` argument."""
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def check_progress_bar(progress_bar) -> bool:
    """``progress_bar``: ``None`` is :func:`interactive`, else a bool (a ``TypeError`` otherwise)."""
    return interactive() if progress_bar is None else check_bool("progress_bar", progress_bar)
