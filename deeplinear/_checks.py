"""Argument validation shared by the public API.

Every public entry point validates its arguments here, *before* any tracing,
compilation or sampling, and raises ``ValueError``/``TypeError`` naming the
argument, the value received and what is allowed.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_positive_int",
    "check_widths",
    "check_ratio",
    "check_key",
    "check_sample_shape",
    "check_inputs",
    "check_real_matrix",
    "check_dtype",
    "check_positive_scalar",
    "is_concrete",
]


def is_concrete(value) -> bool:
    """True unless ``value`` is a JAX tracer (inside ``jit``/``grad``/NUTS)."""
    return not isinstance(value, jax.core.Tracer)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as a Python ``int`` if it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            raise TypeError(
                f"{name} must be an integer, got the float {value!r}; pass {int(value)} instead"
            )
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_widths(widths, num_outputs: int) -> tuple[int, ...]:
    """Hidden widths ``N_1..N_L``: a non-empty sequence of integers ``>= num_outputs``."""
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise TypeError(f"widths must be a sequence of integers N_1..N_L, got {widths!r}")
    widths = tuple(widths)
    if len(widths) == 0:
        raise ValueError("widths must contain at least one hidden layer width, got an empty sequence")
    out = tuple(check_positive_int(f"widths[{i}]", w) for i, w in enumerate(widths))
    narrow = [(i, w) for i, w in enumerate(out) if w < num_outputs]
    if narrow:
        i, w = narrow[0]
        raise ValueError(
            f"widths[{i}] = {w} is smaller than num_outputs = {num_outputs}: Bartlett factors "
            f"need every hidden width N_l >= D (a narrower layer makes Q singular)"
        )
    return out


def check_ratio(value, name: str = "ratio"):
    """Depth-to-width ratio ``a``: a finite number ``> 0`` (tracers pass unchecked)."""
    if not is_concrete(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a real number > 0, got {value!r} ({type(value).__name__})")
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be a real number > 0, got dtype {arr.dtype}")
    v = float(arr)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {v}")
    return value


def check_positive_scalar(name: str, value, allow_zero: bool = False):
    """A finite real scalar ``> 0`` (or ``>= 0``); tracers pass unchecked."""
    if not is_concrete(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    arr = np.asarray(value)
    if arr.shape != ():
        raise ValueError(f"{name} must be a scalar, got an array of shape {arr.shape}")
    v = float(arr)
    bound = ">= 0" if allow_zero else "> 0"
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {bound}, got {v}")
    return value


def check_key(key, name: str = "key"):
    """A JAX PRNG key: a typed key (``jax.random.key``) or a raw ``uint32[2]`` (``PRNGKey``)."""
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return key
    raise TypeError(
        f"{name} must be a single JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
        f"got {_describe(key)}"
    )


def check_sample_shape(sample_shape, name: str = "sample_shape") -> tuple[int, ...]:
    """An ``int`` or tuple of non-negative ``int``; returned as a tuple."""
    if isinstance(sample_shape, numbers.Integral) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    if not isinstance(sample_shape, (tuple, list)):
        raise TypeError(f"{name} must be an int or a tuple of ints, got {sample_shape!r}")
    return tuple(check_positive_int(f"{name}[{i}]", s, minimum=0) for i, s in enumerate(sample_shape))


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
    """A non-empty, finite, real 2-D array (lists accepted); ``layout`` describes the shape
    in messages, e.g. ``"(N0, P) with inputs as columns"``. Returns the array unconverted."""
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError:
            raise ValueError(f"{name} must be a rectangular array of shape {layout}; its rows have different lengths") from None
    if not isinstance(value, (np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be an array of shape {layout}, got {_describe(value)}")
    if value.dtype == object or not (
        np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.ndim != 2:
        raise ValueError(f"{name} must have rank 2, shape {layout}, got shape {value.shape}")
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {value.shape}")
    if is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"{name} contains NaN or infinite values")
    return value


def check_inputs(X, name: str = "X", dtype=None):
    """Inputs ``X`` of shape ``(N0, P)`` (columns are inputs), real and finite."""
    X = check_real_matrix(X, name, "(N0, P) with inputs as columns")
    return jnp.asarray(X, dtype=check_dtype(dtype))


def _describe(value) -> str:
    if isinstance(value, (np.ndarray, jax.Array)):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    return f"{value!r} ({type(value).__name__})"
