"""Type aliases used in signatures (as ``blackjax/types.py``)."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["Array", "ArrayLike", "PRNGKey", "KeyLike"]

Array = jax.Array
#: Anything :func:`jax.numpy.asarray` accepts: NumPy/JAX arrays, nested lists, scalars.
ArrayLike = jax.Array | np.ndarray | list | tuple | float | int
#: A JAX PRNG key: typed (``jax.random.key(0)``) or raw ``uint32[2]`` (``jax.random.PRNGKey(0)``).
PRNGKey = jax.Array
#: A PRNG key or an integer seed in ``[0, 2**32)``; wherever randomness is taken.
KeyLike = jax.Array | int
