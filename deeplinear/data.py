r"""Regression data in the eigenbasis of the input kernel (theory.md §4).

Given ``Q``, the labels ``Y`` (``D x P``) have covariance
:math:`\lambda_* Q \otimes K + \sigma^2 I`. With :math:`K = U \operatorname{diag}(\kappa) U^\top`
the rotated columns :math:`\tilde y_p = (Y U)_{:,p}` are independent,
:math:`\tilde y_p \mid Q \sim N(0, \lambda_* \kappa_p Q + \sigma^2 I_D)`. This module does the
one-time set-up: it keeps the ``R = rank(K)`` nonzero eigenvalues and their
eigenvectors, and summarizes the null space of ``K`` (where :math:`\kappa_p = 0` and the
labels are pure noise) by one number, :math:`\|Y - \tilde Y_R U_R^\top\|_F^2`. After it every
likelihood evaluation costs :math:`O(R D^3)`, independent of ``P``.

* Linear kernel :math:`K = X^\top X / N_0`: a thin SVD :math:`X = W S V^\top` (``O(P N_0^2)``)
  gives :math:`U_R = V`, :math:`\kappa = s^2/N_0`, so ``P`` can be in the millions.
* Any user-supplied PSD Gram matrix (a deep linear head on your own features):
  ``eigh`` (``O(P^3)``).

The set-up runs in float64 NumPy whatever the working precision, then casts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deeplinear._checks import _describe, check_dtype, check_real_matrix

__all__ = ["KernelEigenbasis", "RegressionData", "TestKernel", "check_labels", "check_gram"]


def check_labels(Y, num_obs: int | None = None, name: str = "Y") -> np.ndarray:
    """Labels ``Y`` of shape ``(D, P)`` (outputs as rows, one column per input), finite."""
    Y = check_real_matrix(Y, name, "(D, P) with one column per input")
    if num_obs is not None and Y.shape[1] != num_obs:
        raise ValueError(
            f"{name} has {Y.shape[1]} columns but there are {num_obs} inputs; "
            f"{name} must have shape (D, P) = (D, {num_obs})"
        )
    return np.asarray(Y, dtype=np.float64)


def check_gram(K, name: str = "K", shape: tuple | None = None, symmetric: bool = True) -> np.ndarray:
    """A finite real matrix; if ``symmetric``, square, symmetric and positive semi-definite."""
    if isinstance(K, (list, tuple)):
        K = np.asarray(K)
    if not isinstance(K, (np.ndarray, jax.Array)):
        raise TypeError(f"{name} must be a 2-D array (a Gram matrix), got {_describe(K)}")
    if K.dtype == object or not (np.issubdtype(K.dtype, np.floating) or np.issubdtype(K.dtype, np.integer)):
        raise TypeError(f"{name} must hold real numbers, got dtype {K.dtype}")
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {K.shape}")
    if shape is not None and K.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if symmetric:
        if K.shape[0] != K.shape[1]:
            raise ValueError(f"{name} must be a square Gram matrix, got shape {K.shape}")
        scale = max(np.abs(K).max(), np.finfo(np.float64).tiny)
        asym = np.abs(K - K.T).max() / scale
        if asym > 1e-6:
            raise ValueError(f"{name} must be symmetric, but max|K - K^T| / max|K| = {asym:.2e}")
    return K


class TestKernel(NamedTuple):
    r"""Kernel quantities at test inputs: :math:`\tilde k = U_R^\top k_*` ``(R, P*)``,
    :math:`k_{**}` ``(P*, P*)`` (the test-test Gram matrix) and the part of it the training
    inputs do not explain, :math:`k_\perp = k_{**} - \tilde k^\top \operatorname{diag}(\kappa)^{-1}
    \tilde k` ``(P*, P*)`` (the Schur complement; zero for test inputs in the span of the
    training inputs).

    :math:`k_\perp` is computed in float64 when the test kernel is built, so the predictive
    covariance never subtracts nearly equal numbers in float32. Linear kernel: as
    :math:`x_\perp^\top x'_\perp / N_0` with :math:`x_\perp` the component of :math:`x_*`
    outside the span of the training inputs (a squared norm: accurate to float64 even from
    float32-stored data). User Gram matrix: as the difference above, from the stored
    eigenpairs (with a float32 ``RegressionData`` its error is ~1e-7 of :math:`k_{**}`).
    """

    rotated_cross: jax.Array
    test_gram: jax.Array
    residual_gram: jax.Array


class KernelEigenbasis:
    r"""Nonzero eigenpairs of a training Gram matrix :math:`K` (``P x P``).

    Attributes
    ----------
    eigenvalues : array ``(R,)``
        :math:`\kappa_1..\kappa_R > 0`, the nonzero eigenvalues (``R = rank K``).
    eigenvectors : array ``(P, R)``
        :math:`U_R`, orthonormal columns.
    input_projection : array ``(R, N0)`` or None
        Linear kernel only: :math:`U_R^\top X^\top / N_0`, so that
        :math:`\tilde k = U_R^\top k_* =` ``input_projection @ X_test``.
    """

    def __init__(self, eigenvalues, eigenvectors, input_projection=None):
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.input_projection = input_projection

    @property
    def num_obs(self) -> int:
        """``P``, the number of training inputs."""
        return self.eigenvectors.shape[0]

    @property
    def rank(self) -> int:
        """``R``, the number of nonzero eigenvalues."""
        return self.eigenvalues.shape[0]

    @property
    def num_null(self) -> int:
        """``P - R``, the dimension of the kernel's null space."""
        return self.num_obs - self.rank

    @classmethod
    def linear(cls, X, dtype=None, rtol: float | None = None) -> KernelEigenbasis:
        r"""Linear kernel :math:`K = X^\top X/N_0` from a thin SVD of ``X`` (``N0 x P``).

        Singular values below ``rtol * s_max`` count as zero; the default ``rtol`` is
        ``max(N0, P) * eps(float64)`` (NumPy's ``matrix_rank`` rule).
        """
        dtype = check_dtype(dtype)
        X = np.asarray(check_real_matrix(X, "X", "(N0, P) with inputs as columns"), np.float64)
        n0, p = X.shape
        w, s, vt = np.linalg.svd(X, full_matrices=False)
        rtol = max(n0, p) * np.finfo(np.float64).eps if rtol is None else rtol
        keep = s > rtol * s.max() if s.max() > 0 else np.zeros_like(s, bool)
        if not keep.any():
            raise ValueError("X is zero: the linear kernel X^T X / N0 has rank 0")
        s, w, vt = s[keep], w[:, keep], vt[keep]
        proj = (s[:, None] * w.T) / n0  # U_R^T X^T / N0 = diag(s) W^T / N0
        return cls(
            jnp.asarray(s**2 / n0, dtype), jnp.asarray(vt.T, dtype), jnp.asarray(proj, dtype)
        )

    @classmethod
    def from_gram(cls, K, dtype=None, rtol: float | None = None) -> KernelEigenbasis:
        r"""Any symmetric PSD Gram matrix ``K`` (``P x P``), by ``eigh``.

        Eigenvalues below ``rtol * max(kappa)`` count as zero (default
        ``P * eps(float64)``). Eigenvalues below ``-1e-6 * max(kappa)`` mean ``K`` is not
        PSD: a ``ValueError``.
        """
        dtype = check_dtype(dtype)
        K = check_gram(K, "K")
        kappa, u = np.linalg.eigh((K + K.T) / 2)
        top = kappa.max()
        if top <= 0:
            raise ValueError("K has no positive eigenvalue; a Gram matrix must be PSD and nonzero")
        if kappa.min() < -1e-6 * top:
            raise ValueError(
                f"K must be positive semi-definite, but its smallest eigenvalue is {kappa.min():.3e} "
                f"(largest {top:.3e})"
            )
        rtol = K.shape[0] * np.finfo(np.float64).eps if rtol is None else rtol
        keep = kappa > rtol * top
        return cls(jnp.asarray(kappa[keep], dtype), jnp.asarray(u[:, keep], dtype))

    def rotate(self, Y):
        r"""Return :math:`\tilde Y_R = Y U_R` ``(..., D, R)`` and the null-space energy
        :math:`\|Y - \tilde Y_R U_R^\top\|_F^2` ``(...)``."""
        U = self.eigenvectors.astype(Y.dtype)
        rotated = Y @ U
        if self.num_null == 0:
            return rotated, jnp.zeros(Y.shape[:-2], Y.dtype)
        resid = Y - rotated @ U.T
        return rotated, jnp.sum(resid**2, axis=(-2, -1))

    def test_kernel_linear(self, X_test, dtype) -> TestKernel:
        """Linear kernel at test inputs ``X_test`` (``N0 x P*``), computed in float64."""
        X_test = np.asarray(X_test, np.float64)
        n0 = X_test.shape[0]
        proj = np.asarray(self.input_projection, np.float64)  # diag(s) W_R^T / N0
        span, _ = np.linalg.qr(proj.T)  # orthonormal basis of the training inputs' span
        outside = X_test - span @ (span.T @ X_test)  # x_perp
        return TestKernel(
            jnp.asarray(proj @ X_test, dtype),
            jnp.asarray(X_test.T @ X_test / n0, dtype),
            jnp.asarray(outside.T @ outside / n0, dtype),
        )

    def test_kernel_gram(self, cross_gram, test_gram, dtype) -> TestKernel:
        """User kernel: ``cross_gram`` :math:`K(X, X_*)` ``(P, P*)``, ``test_gram`` ``(P*, P*)``."""
        U = np.asarray(self.eigenvectors, np.float64)
        kappa = np.asarray(self.eigenvalues, np.float64)
        cross = U.T @ np.asarray(cross_gram, np.float64)
        test_gram = np.asarray(test_gram, np.float64)
        resid = test_gram - cross.T @ (cross / kappa[:, None])
        resid = (resid + resid.T) / 2
        np.fill_diagonal(resid, np.maximum(np.diagonal(resid), 0.0))  # rounding below zero
        return TestKernel(jnp.asarray(cross, dtype), jnp.asarray(test_gram, dtype), jnp.asarray(resid, dtype))


jax.tree_util.register_pytree_node(
    KernelEigenbasis,
    lambda b: ((b.eigenvalues, b.eigenvectors, b.input_projection), None),
    lambda _, c: KernelEigenbasis(*c),
)


class RegressionData:
    r"""Training data prepared once for fast likelihoods: the kernel eigenbasis, the
    labels ``Y`` (``D x P``), their rotation :math:`\tilde Y_R = Y U_R` and null-space energy.

    Build it with :meth:`linear` (inputs ``X``, linear kernel) or :meth:`from_gram`
    (your own Gram matrix). It is a JAX pytree, so it can be an argument of a jitted
    function or of a NumPyro model.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(3, 10))     # N0 = 3 features, P = 10 inputs
    >>> Y = np.random.default_rng(1).normal(size=(2, 10))     # D = 2 outputs
    >>> data = RegressionData.linear(X, Y)
    >>> data.num_outputs, data.num_obs, data.basis.rank
    (2, 10, 3)
    """

    def __init__(self, basis, labels, rotated_labels, null_energy, inputs=None):
        self.basis = basis
        self.labels = labels
        self.rotated_labels = rotated_labels
        self.null_energy = null_energy
        self.inputs = inputs

    @property
    def num_outputs(self) -> int:
        """``D``."""
        return self.labels.shape[0]

    @property
    def num_obs(self) -> int:
        """``P``."""
        return self.labels.shape[1]

    @property
    def dtype(self):
        """Floating dtype of the stored arrays; the precision of every computation on this data."""
        return self.labels.dtype

    @property
    def kernel_kind(self) -> str:
        """``"linear"`` or ``"gram"``."""
        return "linear" if self.inputs is not None else "gram"

    @classmethod
    def linear(cls, X, Y, dtype=None, rtol: float | None = None) -> RegressionData:
        r"""Linear kernel :math:`K = X^\top X/N_0`; ``X`` is ``(N0, P)``, ``Y`` is ``(D, P)``."""
        dtype = check_dtype(dtype)
        X64 = np.asarray(check_real_matrix(X, "X", "(N0, P) with inputs as columns"), np.float64)
        Y64 = check_labels(Y, X64.shape[1])
        basis = KernelEigenbasis.linear(X64, dtype, rtol)
        return cls._build(basis, Y64, dtype, inputs=jnp.asarray(X64, dtype))

    @classmethod
    def from_gram(cls, K, Y, dtype=None, rtol: float | None = None) -> RegressionData:
        r"""User-supplied symmetric PSD Gram matrix ``K`` (``P x P``); ``Y`` is ``(D, P)``."""
        dtype = check_dtype(dtype)
        Y64 = check_labels(Y)
        K = check_gram(K, "K")
        if K.shape[0] != Y64.shape[1]:
            raise ValueError(f"K is {K.shape[0]} x {K.shape[1]} but Y has {Y64.shape[1]} columns (inputs)")
        basis = KernelEigenbasis.from_gram(K, dtype, rtol)
        return cls._build(basis, Y64, dtype)

    @classmethod
    def _build(cls, basis, Y64, dtype, inputs=None):
        U = np.asarray(basis.eigenvectors, np.float64)
        rotated = Y64 @ U
        null = np.sum((Y64 - rotated @ U.T) ** 2) if basis.num_null else 0.0
        return cls(
            basis, jnp.asarray(Y64, dtype), jnp.asarray(rotated, dtype), jnp.asarray(null, dtype), inputs
        )

    def test_kernel(self, X_test=None, *, cross_gram=None, test_gram=None) -> TestKernel:
        r"""Kernel quantities at test inputs: ``X_test`` (``N0 x P*``) for the linear kernel,
        or ``cross_gram`` :math:`K(X, X_*)` (``P x P*``) and ``test_gram`` (``P* x P*``)."""
        dtype = self.dtype
        if self.kernel_kind == "linear":
            if X_test is None or cross_gram is not None:
                raise ValueError("this data uses the linear kernel: pass X_test (N0 x P*), not Gram matrices")
            X_test = np.asarray(check_real_matrix(X_test, "X_test", "(N0, P*) with inputs as columns"), np.float64)
            n0 = self.inputs.shape[0]
            if X_test.shape[0] != n0:
                raise ValueError(
                    f"X_test has {X_test.shape[0]} features (rows) but the training inputs have N0 = {n0}"
                )
            return self.basis.test_kernel_linear(X_test, dtype)
        if X_test is not None or cross_gram is None or test_gram is None:
            raise ValueError(
                "this data uses a user-supplied Gram matrix: pass cross_gram (P x P*) and test_gram (P* x P*)"
            )
        cross = check_gram(cross_gram, "cross_gram", symmetric=False)
        if cross.shape[0] != self.num_obs:
            raise ValueError(f"cross_gram must have shape (P, P*) with P = {self.num_obs}, got {cross.shape}")
        test = check_gram(test_gram, "test_gram", shape=(cross.shape[1],) * 2)
        return self.basis.test_kernel_gram(cross, test, dtype)

    def __repr__(self):
        return (
            f"RegressionData(kernel={self.kernel_kind!r}, num_outputs={self.num_outputs}, "
            f"num_obs={self.num_obs}, rank={self.basis.rank}, dtype={self.dtype})"
        )


jax.tree_util.register_pytree_node(
    RegressionData,
    lambda d: ((d.basis, d.labels, d.rotated_labels, d.null_energy, d.inputs), None),
    lambda _, c: RegressionData(*c),
)
