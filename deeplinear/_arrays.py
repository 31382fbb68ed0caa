"""Device arrays of a given precision without a conversion program.

``jnp.asarray(x, dtype)`` of a device array (a NumPyro distribution's parameter, a float64 array in a
float32 run) runs an eager ``convert_element_type``, which JAX compiles as a program of its own, once
per shape and dtype pair in each process: seconds of a first fit spent on conversions. Converting on
the host and putting the result on the device compiles nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["on_device"]


def on_device(x, dtype) -> jax.Array:
    """``x`` as a device array of ``dtype``, converted on the host; a tracer (inside ``jit``) is
    converted in the program being traced."""
    if isinstance(x, jax.core.Tracer):
        return jnp.asarray(x, dtype)
    return jax.device_put(np.asarray(x, dtype))
