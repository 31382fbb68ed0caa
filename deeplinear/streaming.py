r"""Set-up in one streaming pass: sufficient statistics of the linear kernel, merged over row chunks.

For the linear kernel :math:`K = X X^\top/N_0` everything the likelihood and the predictions
need -- the nonzero eigenvalues :math:`\kappa`, the rotated labels :math:`\tilde Y = U_R^\top Y`,
the null-space energy :math:`\|Y - U_R\tilde Y\|_F^2`, the input projection
:math:`X^\top U_R/N_0` and ``P`` -- is a function of the triangular factor ``R`` of a QR
decomposition of the ``P x (N0 + D)`` matrix :math:`[X \mid Y]`:

.. math::

    [X \mid Y] = \mathcal Q \begin{pmatrix} R_{11} & R_{12} \\ 0 & R_{22} \end{pmatrix},
    \qquad R_{11} = U_r S V^\top \ \text{(SVD)},

so :math:`X = (\mathcal Q_1 U_r) S V^\top` is a thin SVD of ``X`` (:math:`U_R = \mathcal Q_1 U_r`,
:math:`\kappa = s^2/N_0`), :math:`\tilde Y = U_r^\top R_{12}`, and the null-space energy is
:math:`\|R_{22}\|_F^2 + \|R_{12} - U_r U_r^\top R_{12}\|_F^2`. ``R`` of a stack of chunks is ``R``
of the stack of the chunks' ``R`` factors (TSQR: Demmel et al. 2012), so chunks are reduced in
any order or tree -- one pass over a memmap, or a distributed reduction in which each worker
returns :meth:`LinearStatistics.from_chunk` of its rows and :meth:`LinearStatistics.merge`
combines them. Everything is float64 Householder QR: backward stable, with no normal equations
(:math:`X^\top X` would square the condition number).

Memory: one chunk plus an ``(N0 + D) x (N0 + D)`` matrix. The result keeps no per-row arrays, so
leave-one-out needs the rows again (:func:`deeplinear.loo.loo` with ``rows=``).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from deeplinear._validation import check_inputs, check_labels, check_positive_int, describe

if TYPE_CHECKING:  # dask and JAX are not needed to read rows
    import dask.array
    import dask.dataframe

    from deeplinear._types import ArrayLike, Chunks, RowArray

__all__ = ["LinearStatistics", "ArrayChunks"]

DEFAULT_CHUNK_ROWS = 2**16


def _magnitude_range(a: np.ndarray) -> tuple[float, float]:
    """(smallest nonzero, largest) absolute value; (0, 0) for an all-zero array."""
    mags = np.abs(a)
    top = float(mags.max(initial=0.0))
    nonzero = mags[mags > 0]
    return (float(nonzero.min()) if nonzero.size else 0.0), top


def _merge_ranges(a, b):
    lows = [x for x in (a[0], b[0]) if x > 0]
    return (min(lows) if lows else 0.0), max(a[1], b[1])


@dataclasses.dataclass(frozen=True)
class LinearStatistics:
    r"""Mergeable sufficient statistics of rows of inputs ``X`` and labels ``Y`` for the linear kernel.

    Attributes
    ----------
    r_factor : numpy.ndarray ``(N0 + D, N0 + D)``
        Upper-triangular ``R`` of :math:`[X \mid Y] = \mathcal Q R` (float64; rows of zeros while
        fewer than ``N0 + D`` rows were seen).
    num_rows : int
        ``P``, the rows seen.
    num_features : int
        ``N0``.
    input_range, label_range : (float, float)
        Smallest nonzero and largest magnitude of ``X`` and of ``Y`` (to check, at set-up, that the
        working precision can hold them, as the in-memory set-up does).
    input_sums, label_sums : numpy.ndarray ``(N0,)``, ``(D,)``
        Column sums :math:`X^\top 1`, :math:`Y^\top 1` (what per-output intercepts need:
        :class:`~deeplinear.data.InterceptTerms`); merged by adding.

    Build with :meth:`from_chunk`, combine with :meth:`merge` (associative; ``R`` is unique up to
    the signs of its rows, which nothing downstream depends on), or do both with
    :meth:`accumulate`; then :meth:`deeplinear.data.RegressionData.from_statistics`.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, Y = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 2))
    >>> whole = LinearStatistics.from_chunk(X, Y)
    >>> halves = LinearStatistics.from_chunk(X[:300], Y[:300]).merge(LinearStatistics.from_chunk(X[300:], Y[300:]))
    >>> bool(np.allclose(np.abs(whole.r_factor), np.abs(halves.r_factor)))
    True
    """

    r_factor: np.ndarray
    num_rows: int
    num_features: int
    input_range: tuple[float, float]
    label_range: tuple[float, float]
    input_sums: np.ndarray | None = None
    label_sums: np.ndarray | None = None

    @property
    def num_outputs(self) -> int:
        """``D``."""
        return self.r_factor.shape[0] - self.num_features

    @classmethod
    def from_chunk(cls, X: ArrayLike, Y: ArrayLike) -> LinearStatistics:
        """Statistics of one chunk of rows: ``X`` ``(m, N0)``, ``Y`` ``(m, D)`` (validated like the
        in-memory set-up: finite, real, one row per observation)."""
        X = check_inputs(X, "X (chunk)")
        Y = check_labels(Y, num_obs=X.shape[0], name="Y (chunk)")
        n = X.shape[1] + Y.shape[1]
        r = np.linalg.qr(np.hstack([X, Y]), mode="r")
        return cls(_square(r, n), X.shape[0], X.shape[1], _magnitude_range(X), _magnitude_range(Y),
                   X.sum(axis=0), Y.sum(axis=0))

    def merge(self, other: LinearStatistics) -> LinearStatistics:
        """Statistics of the rows of both (``R`` of the two stacked ``R`` factors)."""
        if not isinstance(other, LinearStatistics):
            raise TypeError(f"other must be LinearStatistics, got {describe(other)}")
        if (other.num_features, other.num_outputs) != (self.num_features, self.num_outputs):
            raise ValueError(
                f"cannot merge statistics of (N0, D) = {(other.num_features, other.num_outputs)} into "
                f"{(self.num_features, self.num_outputs)}: every chunk must have the same columns"
            )
        r = np.linalg.qr(np.vstack([self.r_factor, other.r_factor]), mode="r")
        sums: tuple = (None, None)
        if (self.input_sums is not None and other.input_sums is not None
                and self.label_sums is not None and other.label_sums is not None):  # kept together
            sums = (self.input_sums + other.input_sums, self.label_sums + other.label_sums)
        return LinearStatistics(
            _square(r, r.shape[1]), self.num_rows + other.num_rows, self.num_features,
            _merge_ranges(self.input_range, other.input_range), _merge_ranges(self.label_range, other.label_range),
            *sums,
        )

    @classmethod
    def from_dask(cls, X: dask.array.Array, Y: dask.array.Array, *, split_every: int = 8) -> LinearStatistics:
        """Statistics of rows held by Dask -- ``X`` ``(P, N0)`` and ``Y`` ``(P, D)`` as dask arrays (e.g.
        ``dask.array.from_zarr``), chunked along the rows (tables: :meth:`from_dask_dataframe`).

        Each row chunk becomes :meth:`from_chunk` on the worker that holds it (columns are rechunked
        to one block, ``Y`` to the row chunks of ``X``), and the statistics are merged in a tree of
        fan-in ``split_every`` (float64 TSQR), so only ``(N0 + D)``-square matrices travel. It runs on
        Dask's current scheduler: a ``distributed.Client`` when one is active. Equal to
        :meth:`from_chunk` of all the rows to round-off."""
        import dask

        split_every = check_positive_int("split_every", split_every, minimum=2)
        X, Y = _dask_matrix(X, "X"), _dask_matrix(Y, "Y")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must have the same rows (one observation per row): {X.shape[0]} and "
                             f"{Y.shape[0]}")
        X = X.rechunk({1: -1})
        Y = Y.rechunk({0: X.chunks[0], 1: -1})
        parts = [dask.delayed(_chunk_of_arrays)(x, y) for x, y in zip(X.to_delayed().ravel(), Y.to_delayed().ravel())]
        return _tree_merge(parts, split_every)

    @classmethod
    def from_dask_dataframe(cls, frame: dask.dataframe.DataFrame, inputs: Sequence[str], outputs: Sequence[str], *,
                            split_every: int = 8) -> LinearStatistics:
        """Statistics of the rows of a dask DataFrame (e.g. ``dask.dataframe.read_parquet`` or
        ``read_csv``): the ``inputs`` columns are ``X``, the ``outputs`` columns ``Y`` (lists of
        names). Each partition is read once, on its worker, and reduced as in :meth:`from_dask`; an
        empty partition (a filtered frame has them) contributes nothing. The columns must be numeric
        (a column of strings is named in the error, before anything is read)."""
        import dask

        split_every = check_positive_int("split_every", split_every, minimum=2)
        if not hasattr(frame, "to_delayed") or not hasattr(frame, "columns"):
            raise TypeError(f"frame must be a dask DataFrame, got {describe(frame)}")
        inputs, outputs = _column_list("inputs", inputs), _column_list("outputs", outputs)
        columns = set(frame.columns)
        missing = [c for c in inputs + outputs if c not in columns]
        if missing or not inputs or not outputs:
            raise ValueError(f"inputs and outputs must be non-empty lists of the frame's columns; missing: {missing}")
        if set(inputs) & set(outputs):
            raise ValueError(f"a column cannot be both an input and an output: {sorted(set(inputs) & set(outputs))}")
        _check_numeric_columns(frame[inputs + outputs].dtypes)
        parts = [dask.delayed(_chunk_of_frame)(part, inputs, outputs)
                 for part in frame[inputs + outputs].to_delayed()]
        return _tree_merge(parts, split_every)

    @classmethod
    def accumulate(cls, chunks: Chunks) -> LinearStatistics:
        """Statistics of an iterable of ``(X_chunk, Y_chunk)`` pairs (e.g. :class:`ArrayChunks`), in
        one pass with one chunk in memory at a time."""
        total = None
        for i, pair in enumerate(chunks):
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise TypeError(f"chunk {i} must be a pair (X_chunk, Y_chunk), got {describe(pair)}")
            stats = cls.from_chunk(*pair)
            total = stats if total is None else total.merge(stats)
        if total is None:
            raise ValueError("chunks is empty: no rows to set up from")
        return total


def _merge_all(*parts: LinearStatistics | None) -> LinearStatistics | None:
    """Merge several statistics (one node of a tree reduction); ``None`` (no rows) is left out."""
    total = None
    for part in parts:
        if part is not None:
            total = part if total is None else total.merge(part)
    return total


def _column_list(name: str, value) -> list:
    """A list of column names: a bare string is refused (``list("abc")`` would be three columns)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of column names, got the string {value!r}; for one column "
                        f"pass [{value!r}]")
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of column names, got {describe(value)}") from None


def _check_numeric_columns(dtypes) -> None:
    """Every column of a frame's ``dtypes`` (a pandas Series) holds real numbers or booleans."""
    import pandas as pd

    bad = {column: str(dtype) for column, dtype in dtypes.items()
           if not (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype))}
    if bad:
        raise TypeError("the columns must hold real numbers; not numeric: "
                        + ", ".join(f"{column!r} ({dtype})" for column, dtype in bad.items()))


def _chunk_of_arrays(X, Y) -> LinearStatistics | None:
    """:meth:`LinearStatistics.from_chunk`, or ``None`` for a chunk of no rows (a sliced array has them)."""
    if np.shape(X)[0] == 0 and np.shape(Y)[0] == 0:
        return None
    return LinearStatistics.from_chunk(X, Y)


def _chunk_of_frame(part, inputs, outputs) -> LinearStatistics | None:
    """:meth:`LinearStatistics.from_chunk` of one pandas partition (``inputs``/``outputs``: column
    lists); ``None`` for an empty partition."""
    if len(part) == 0:
        return None
    return LinearStatistics.from_chunk(part[inputs].to_numpy(np.float64), part[outputs].to_numpy(np.float64))


def _tree_merge(parts, split_every: int):
    """Merge delayed statistics in a tree of fan-in ``split_every`` and compute the root."""
    import dask

    if not parts:
        raise ValueError("no rows to set up from (no chunks)")
    while len(parts) > 1:
        parts = [dask.delayed(_merge_all)(*parts[i:i + split_every]) for i in range(0, len(parts), split_every)]
    total = dask.compute(parts[0])[0]
    if total is None:
        raise ValueError("no rows to set up from (every partition is empty)")
    return total


def _dask_matrix(value, name: str):
    """A 2-D dask array with known row chunks."""
    import dask.array as da

    if hasattr(value, "to_dask_array"):  # a dask DataFrame: its columns may be split differently from another's
        raise TypeError(f"{name} is a dask DataFrame: use LinearStatistics.from_dask_dataframe(frame, inputs, "
                        "outputs), which reads each partition once")
    if not isinstance(value, da.Array):
        raise TypeError(f"{name} must be a dask array, got {describe(value)}")
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows are observations), got {value.ndim} dimensions")
    if any(np.isnan(c) for c in value.chunks[0]):
        raise ValueError(f"{name} has unknown chunk lengths; compute them first (e.g. to_dask_array(lengths=True))")
    return value


def _square(r: np.ndarray, n: int) -> np.ndarray:
    """``r`` (``k x n``, ``k <= n`` after QR of few rows) padded with zero rows to ``n x n``."""
    if r.shape[0] == n:
        return r
    out = np.zeros((n, n))
    out[: r.shape[0]] = r
    return out


class ArrayChunks:
    r"""Row chunks of inputs ``X`` ``(P, N0)`` and labels ``Y`` ``(P, D)`` held in arrays that read
    only the rows asked for: NumPy memmaps (``np.load(path, mmap_mode="r")``), HDF5 or Zarr
    datasets, or in-memory arrays.

    Iterating yields ``(X[a:b], Y[a:b])`` as float64 NumPy arrays, ``chunk_rows`` rows at a time,
    and can be repeated; :meth:`rows` reads chosen rows (for subsampled leave-one-out).
    """

    def __init__(self, X: RowArray, Y: RowArray, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
        for name, a in (("X", X), ("Y", Y)):
            shape = getattr(a, "shape", None)
            if shape is None or len(shape) != 2 or not all(isinstance(d, numbers.Integral) for d in shape):
                raise TypeError(f"{name} must be a 2-D array-like with a shape (rows first), got {describe(a)}")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"X and Y must have the same number of rows (one observation per row), got X {tuple(X.shape)} "
                f"and Y {tuple(Y.shape)}"
            )
        if X.shape[0] == 0:
            raise ValueError("X and Y have no rows")
        self.X, self.Y = X, Y
        self.chunk_rows = check_positive_int("chunk_rows", chunk_rows)

    @property
    def num_rows(self) -> int:
        """``P``."""
        return int(self.X.shape[0])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, self.num_rows, self.chunk_rows):
            stop = min(start + self.chunk_rows, self.num_rows)
            yield np.asarray(self.X[start:stop], np.float64), np.asarray(self.Y[start:stop], np.float64)

    def rows(self, indices: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(X[indices], Y[indices])`` as float64 for sorted, distinct row indices."""
        indices = np.asarray(indices)
        return np.asarray(self.X[indices], np.float64), np.asarray(self.Y[indices], np.float64)

    def __repr__(self):
        return (f"ArrayChunks(P={self.num_rows}, N0={self.X.shape[1]}, D={self.Y.shape[1]}, "
                f"chunk_rows={self.chunk_rows})")
