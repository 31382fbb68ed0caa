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
           "NoiseVarianceLike", "NoiseCorrelationLike", "InterceptLike", "Chunks", "RowSource", "RowArray"]

Array = jax.Array
#: ``jax.Array | numpy.ndarray | list | tuple | float | int``, anything :func:`jax.numpy.asarray` accepts.
type ArrayLike = jax.Array | np.ndarray | list | tuple | float | int
#: A JAX PRNG key: typed (``jax.random.key(0)``) or raw ``uint32[2]`` (``jax.random.PRNGKey(0)``).
PRNGKey = jax.Array
#: ``jax.Array | int``, a PRNG key or an integer seed in ``[0, 2**32)``; wherever randomness is taken.
type KeyLike = jax.Array | int
#: ``jax.typing.DTypeLike``, a floating dtype (``jnp.float32``, ``"float64"``, ...); ``None`` means JAX's
#: default.
type DTypeLike = jax.typing.DTypeLike
#: ``int | tuple[int, ...]``, a batch shape for draws (``()`` for one, ``n`` or ``(n, m)`` for many).
type Shape = int | tuple[int, ...]
#: ``concurrent.futures.Executor``, where independent work runs (a process or thread pool,
#: ``dask.distributed.Client.get_executor()``).
type Executor = concurrent.futures.Executor
#: ``str | os.PathLike[str]``, a file or folder name (``pathlib.Path`` included).
type PathLike = str | os.PathLike[str]
#: ``float | numpyro.distributions.Distribution``, a positive scale such as :math:`\lambda_*`, fixed or with
#: a prior.
type ScaleLike = float | dist.Distribution
#: ``ArrayLike | numpyro.distributions.Distribution``, the noise variance (a scalar or ``D`` per-output
#: values) or a prior over it.
type NoiseVarianceLike = ArrayLike | dist.Distribution
#: ``ArrayLike | numpyro.distributions.Distribution``, the full-noise correlation (a ``D x D`` correlation
#: matrix) or ``numpyro.distributions.LKJCholesky``.
type NoiseCorrelationLike = ArrayLike | dist.Distribution
#: ``ArrayLike | numpyro.distributions.Distribution``, ``D`` fixed per-output intercepts or a prior over them.
type InterceptLike = ArrayLike | dist.Distribution
#: ``Iterable[tuple[ArrayLike, ArrayLike]]``, row chunks ``(X_chunk, Y_chunk)`` of the training data (a
#: list, a generator, an :class:`~deeplinear.streaming.ArrayChunks`), read once.
type Chunks = Iterable[tuple[ArrayLike, ArrayLike]]


class RowSource(Protocol):
    """The training rows again, for data set up by streaming: iterable chunk by chunk, and
    ``rows(indices)`` gives the rows at sorted indices (:class:`~deeplinear.streaming.ArrayChunks`)."""

    def __iter__(self) -> Iterator[tuple[ArrayLike, ArrayLike]]: ...

    def rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class RowArray(Protocol):
    """A 2-D array read by rows, in memory or not: a NumPy array or memmap, an ``h5py`` or ``zarr``
    dataset -- anything with a ``shape`` whose row slices and index arrays convert to NumPy."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: slice | np.ndarray, /) -> ArrayLike: ...
