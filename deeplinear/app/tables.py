r"""Tables in, arrays out: reading users' CSV/NPY files for the command line.

Files hold one row per observation, and so do the arrays: columns are chosen by name (CSV with
a header) or by index (NPY, or CSV when given integers); inputs become ``X`` (``(P, N0)``) and
labels ``Y`` (``(P, D)``). :class:`Standardizer` z-scores the columns with training statistics
(the linear kernel is not scale invariant) and maps predictions back:
:math:`f = \mu + s \odot f_{\text{std}}`,
:math:`\Sigma = \operatorname{diag}(s)\,\Sigma_{\text{std}}\,\operatorname{diag}(s)`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Table", "read_table", "select_columns", "column_indices", "Standardizer"]


class Table(NamedTuple):
    """Column names and a ``(rows, columns)`` float64 array."""

    columns: list
    values: np.ndarray


def read_table(path) -> Table:
    """Read a ``.csv`` (header row required) or ``.npy`` (2-D numeric) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path}: not a numeric .npy array ({err})") from None
        real = np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        if arr.ndim != 2 or not real:
            raise ValueError(
                f"{path}: expected a 2-D array of real numbers, got dtype {arr.dtype} and shape {arr.shape}"
                + (" (complex values: the imaginary part would be lost)" if np.iscomplexobj(arr) else "")
            )
        return Table([str(i) for i in range(arr.shape[1])], arr.astype(np.float64))
    if suffix == ".csv":
        import pandas as pd

        try:
            df = pd.read_csv(path)
        except Exception as err:  # pandas raises several parser error types
            raise ValueError(f"{path}: cannot be read as CSV ({err})") from None
        if df.shape[0] == 0:
            raise ValueError(f"{path}: no data rows")
        header = _header_of_even_rows(path)
        duplicates = sorted(name for name, count in Counter(header).items() if count > 1)
        if duplicates:
            raise ValueError(f"{path}: the header names {', '.join(map(repr, duplicates))} more than once; "
                             "column names must be unique")
        return Table(header, df.to_numpy())
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv or .npy")


def _header_of_even_rows(path) -> list[str]:
    """The CSV header as written (pandas renames duplicates to ``a.1``, which would hide them),
    after checking that every data row has as many fields as the header: pandas reads a row with
    one field more (a trailing comma) by making the first column the index, which shifts every
    column by one. Blank lines are skipped, as pandas skips them."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        for row in reader:
            if row and len(row) != len(header):
                raise ValueError(
                    f"{path}: line {reader.line_num} has {len(row)} fields but the header has {len(header)}"
                    + (" (a trailing comma?)" if len(row) == len(header) + 1 and not row[-1].strip() else "")
                    + "; every row needs one value per column")
    return header


def select_columns(table: Table, spec: str, what: str, path="") -> np.ndarray:
    """Columns named (or indexed) in the comma-separated ``spec``, as ``(rows, len(spec))`` float64."""
    idx = column_indices(table, spec, what, path)
    names = [table.columns[i] for i in idx]
    block = table.values[:, idx]
    try:
        block = block.astype(np.float64)
    except (TypeError, ValueError):
        for j, name in enumerate(names):
            try:
                block[:, j].astype(np.float64)
            except (TypeError, ValueError):
                rows = [r for r, v in enumerate(block[:, j]) if not _is_number(v)]
                raise ValueError(f"--{what}: column {name!r} of {path} is not numeric: row {rows[0] + 2} holds "
                                 f"{block[rows[0], j]!r}") from None
        raise
    bad = ~np.isfinite(block)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"--{what}: {path} has a missing or non-finite value in column {names[c]!r}, row {r + 2}")
    return block


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def column_indices(table: Table, spec: str, what: str, path="") -> list[int]:
    """Indices of the columns named (or indexed) in the comma-separated ``spec``; each once."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--{what} needs at least one column name")
    position: dict[str, int] = {}  # name -> first index: one pass, so 10^5 names take milliseconds
    for i, column in enumerate(table.columns):
        position.setdefault(column, i)
    idx = []
    for n in names:
        if n in position:
            idx.append(position[n])
        elif n.isdigit() and int(n) < len(table.columns):
            idx.append(int(n))
        else:
            shown = ", ".join(table.columns[:20]) + (f", ... ({len(table.columns)} in all)"
                                                     if len(table.columns) > 20 else "")
            raise ValueError(f"--{what}: no column {n!r} in {path}; columns are {shown}")
    if len(set(idx)) != len(idx):
        raise ValueError(f"--{what} names a column more than once: {spec}")
    return idx


class Standardizer(NamedTuple):
    """Per-column mean and scale of a ``(observations, columns)`` array."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, A: np.ndarray) -> Standardizer:
        """Column means and standard deviations (a constant column keeps scale 1).

        Computed on the columns divided by their largest magnitude, so columns near the float64
        limit (1e307) neither overflow to ``inf`` nor get silently zeroed. Needs two rows or more.
        """
        if A.shape[0] < 2:
            raise ValueError(
                f"standardizing needs at least 2 rows, got {A.shape[0]} (one row has no spread); "
                "add rows or pass --no-standardize"
            )
        peak = np.abs(A).max(axis=0)
        peak = np.where(peak > 0, peak, 1.0)
        B = A / peak
        mean = B.mean(axis=0)
        scale = (B - mean).std(axis=0) * peak
        scale = np.where(scale > 0, scale, 1.0)
        return cls(mean * peak, scale)

    @classmethod
    def identity(cls, A: np.ndarray) -> Standardizer:
        """No scaling (mean 0, scale 1) for the columns of ``A``."""
        return cls(np.zeros(A.shape[1]), np.ones(A.shape[1]))

    def transform(self, A):
        """(A - mean) / scale, column by column (halved first -- exact in binary -- so that the
        difference of two values near +-1e308 does not overflow)."""
        return (A / 2 - self.mean / 2) / self.scale * 2

    def inverse_mean(self, M):
        """Means ``(..., D)`` back to original units."""
        return M * self.scale + self.mean

    def inverse_sd(self, C):
        """Standard deviations ``(..., D)`` in original units from standardized covariances
        ``(..., D, D)`` (``sqrt(C_dd) * s_d``: no product of two large scales)."""
        return np.sqrt(np.diagonal(C, axis1=-2, axis2=-1)) * self.scale

    def inverse_cov(self, C):
        """``(..., D, D)`` covariances back to original units."""
        return C * self.scale[:, None] * self.scale[None, :]
