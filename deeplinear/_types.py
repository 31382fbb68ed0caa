"""Type aliases used in signatures (as ``blackjax/types.py``)."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterable, Iterator
from typing import Protocol

import jax
import numpy as np
from numpyro import distributions as dist

__all__ = ["Array", "ArrayLike", "PRNGKey", "KeyLike", "DTypeLike", "Shape", "Executor", "PathLike", "ScaleLike",
           "NoiseVarianceLike", "NoiseCorrelationLike", "InterceptLike", "Chunks", "RowSource"]

Array = jax.Array
#: Anything :func:`jax.numpy.asarray` accepts: NumPy/JAX arrays, nested lists, scalars.
ArrayLike = jax.Array | np.ndarray | list | tuple | float | int
#: A JAX PRNG key: typed (``jax.random.key(0)``) or raw ``uint32[2]`` (``jax.random.PRNGKey(0)``).
PRNGKey = jax.Array
#: A PRNG key or an integer seed in ``[0, 2**32)``; wherever randomness is taken.
KeyLike = jax.Array | int
#: A floating dtype (``jnp.float32``, ``"float64"``, ...); ``None`` means JAX's default.
DTypeLike = jax.typing.DTypeLike
#: A batch shape for draws: ``()`` for one, ``n`` or ``(n, m)`` for many.
Shape = int | tuple[int, ...]
#: Where independent work runs: any :class:`concurrent.futures.Executor` (process or thread pool,
#: ``dask.distributed.Client.get_executor()``).
Executor = concurrent.futures.Executor
#: A file or folder name: ``str`` or :class:`os.PathLike` (``pathlib.Path``).
PathLike = str | os.PathLike[str]
#: A positive scale such as :math:`\lambda_*`: fixed, or a numpyro prior over it.
ScaleLike = float | dist.Distribution
#: Noise variance: a scalar, ``D`` per-output values, or a numpyro prior over them.
NoiseVarianceLike = ArrayLike | dist.Distribution
#: Full-noise correlation: a ``D x D`` correlation matrix or ``numpyro.distributions.LKJCholesky``.
NoiseCorrelationLike = ArrayLike | dist.Distribution
#: Per-output intercepts: ``D`` fixed values or a numpyro prior over them.
InterceptLike = ArrayLike | dist.Distribution
#: Row chunks of the training data, ``(X_chunk, Y_chunk)`` pairs (a list, a generator, an
#: :class:`~deeplinear.streaming.ArrayChunks`), read once.
Chunks = Iterable[tuple[ArrayLike, ArrayLike]]


class RowSource(Protocol):
    """The training rows again, for data set up by streaming: iterable chunk by chunk, and
    ``rows(indices)`` gives the rows at sorted indices (:class:`~deeplinear.streaming.ArrayChunks`)."""

    def __iter__(self) -> Iterator[tuple[ArrayLike, ArrayLike]]: ...

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
