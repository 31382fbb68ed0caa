r"""Built-in data for demonstrations and tests.

:func:`correlated_outputs` draws a linear teacher with ``D`` correlated outputs: the
rows of the teacher matrix :math:`B` (``D x N0``) have correlation ``correlation``, so
that :math:`f(x) = B x / \sqrt{N_0}` has output covariance :math:`\propto C`, and labels
are :math:`Y = f(X) + \sqrt{\sigma^2}\,E`; rows are observations (``X`` is ``(P, N0)``, ``Y``
is ``(P, D)``). With ``num_features > num_train`` the test
inputs leave the span of the training inputs, where the predictive covariance is
proportional to :math:`E[Q \mid Y]` and label-dependent correlations are visible.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from deeplinear._validation import check_positive_int

__all__ = ["Dataset", "correlated_outputs", "linnerud"]


class Dataset(NamedTuple):
    """Train/test split; one observation per row: inputs ``(P, N0)``, labels ``(P, D)``."""

    X_train: np.ndarray
    Y_train: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    description: str


def correlated_outputs(
    num_train: int = 12,
    num_test: int = 8,
    num_features: int = 30,
    num_outputs: int = 2,
    correlation: float = 0.9,
    noise_variance: float = 0.05,
    seed: int = 0,
) -> Dataset:
    r"""Synthetic regression data with correlated outputs (a linear teacher).

    :math:`B = L Z` with :math:`L L^\top = C` (unit diagonal, off-diagonal ``correlation``)
    and :math:`Z_{ij} \sim N(0,1)`; :math:`x \sim N(0, I_{N_0})`.
    """
    num_train = check_positive_int("num_train", num_train)
    num_test = check_positive_int("num_test", num_test)
    num_features = check_positive_int("num_features", num_features)
    D = check_positive_int("num_outputs", num_outputs)
    if not -1 / max(D - 1, 1) < correlation < 1:
        raise ValueError(f"correlation must be in (-1/(D-1), 1) for a valid correlation matrix, got {correlation}")
    if not noise_variance >= 0:
        raise ValueError(f"noise_variance must be >= 0, got {noise_variance}")
    rng = np.random.default_rng(seed)
    C = np.full((D, D), correlation) + (1 - correlation) * np.eye(D)
    B = np.linalg.cholesky(C) @ rng.normal(size=(D, num_features))
    X = rng.normal(size=(num_features, num_train + num_test)).T
    Y = X @ B.T / np.sqrt(num_features) + np.sqrt(noise_variance) * rng.normal(size=(D, X.shape[0])).T
    desc = (
        f"linear teacher, N0={num_features}, D={D} outputs with correlation {correlation}, "
        f"noise variance {noise_variance}, {num_train} train / {num_test} test inputs, seed {seed}"
    )
    return Dataset(X[:num_train], Y[:num_train], X[num_train:], Y[num_train:], desc)


LINNERUD_INPUTS = ("Chins", "Situps", "Jumps")
LINNERUD_OUTPUTS = ("Weight", "Waist", "Pulse")


def linnerud_path():
    """Path of the bundled ``linnerud.csv`` (see ``deeplinear/data_files/README.md``)."""
    from importlib import resources

    return resources.files("deeplinear") / "data_files" / "linnerud.csv"


def linnerud(num_test: int = 5, seed: int = 0) -> Dataset:
    """Linnerud exercise (inputs) and physiology (3 correlated outputs) data, 20 men.

    Raw units; a random split of ``num_test`` test rows (fixed by ``seed``). Source and
    licence: ``deeplinear/data_files/README.md`` (Tenenhaus 1998, via scikit-learn, BSD-3).
    """
    num_test = check_positive_int("num_test", num_test)
    if num_test >= 20:
        raise ValueError(f"num_test must be < 20 (there are 20 rows), got {num_test}")
    with linnerud_path().open() as fh:
        header = [c.strip() for c in fh.readline().split(",")]
        table = np.loadtxt(fh, delimiter=",", ndmin=2)
    X = table[:, [header.index(c) for c in LINNERUD_INPUTS]]
    Y = table[:, [header.index(c) for c in LINNERUD_OUTPUTS]]
    perm = np.random.default_rng(seed).permutation(20)
    test, train = perm[:num_test], perm[num_test:]
    desc = (
        f"Linnerud (Tenenhaus 1998): 3 exercise inputs, 3 physiological outputs, "
        f"{20 - num_test} train / {num_test} test"
    )
    return Dataset(X[train], Y[train], X[test], Y[test], desc)
