r"""Regression data in the eigenbasis of the input kernel (theory.md §4).

**Rows are observations.** The package takes inputs ``X`` as ``(P, N0)`` (one input per row),
labels ``Y`` as ``(P, D)``, Gram matrices ``K`` as ``(P, P)`` and cross-Gram matrices
:math:`K(X, X_*)` as ``(P, P*)``, as NumPy/pandas, scikit-learn, tinygp and NumPyro do.
theory.md and the paper write the transposes: their :math:`X` is ``N0 x P`` and their :math:`Y` is
``D x P``. So theory.md's :math:`X` is ``X.T`` here, its :math:`Y` is ``Y.T``, the kernel
:math:`K = X^\top X/N_0` of theory.md is ``X @ X.T / N0`` here, its :math:`\tilde y_p = (YU)_{:,p}`
is row ``p`` of ``U.T @ Y``, and every formula holds unchanged with this substitution.

Orientation is never guessed. An array whose shape cannot be ``(P, N0)``/``(P, D)`` together
with the others (``X`` with ``N0 != P`` passed transposed) is an error naming the array to
transpose. A square array (``N0 = P``, or ``D = P``) fits both readings; it is always read with
rows as observations, like every other array, so its meaning does not depend on its shape --
check ``repr(data)``, which states ``P`` and ``D``. Masked arrays with masked entries, complex
arrays and magnitudes the working precision cannot hold (see
:func:`deeplinear._validation.check_representable`) are refused.

Given ``Q``, the labels have covariance :math:`\lambda_* Q \otimes K + \sigma^2 I`. With
:math:`K = U \operatorname{diag}(\kappa) U^\top` the rotated labels :math:`\tilde y_p` (rows of
:math:`\tilde Y = U_R^\top Y`, ``(R, D)``) are independent,
:math:`\tilde y_p \mid Q \sim N(0, \lambda_* \kappa_p Q + \sigma^2 I_D)`. This module does the
one-time set-up: it keeps the ``R = rank(K)`` nonzero eigenvalues and their eigenvectors, and
summarizes the null space of ``K`` (where :math:`\kappa_p = 0` and the labels are pure noise) by
one number, :math:`\|Y - U_R \tilde Y\|_F^2`. After it every likelihood evaluation costs
:math:`O(R D^3)`, independent of ``P``.

* Linear kernel :math:`K = X X^\top / N_0`: a thin SVD :math:`X = W S V^\top` (``O(P N_0^2)``)
  gives :math:`U_R = W`, :math:`\kappa = s^2/N_0`, so ``P`` can be in the millions.
* Any user-supplied PSD Gram matrix (a deep linear head on your own features): ``eigh``
  (``O(P^3)``).

The set-up runs in float64 NumPy whatever the working precision, then casts.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from deeplinear._pytree import pytree_dataclass, static_field
from deeplinear._types import Array, ArrayLike, Chunks, DTypeLike
from deeplinear._validation import (
    check_dtype,
    check_gram,
    check_inputs,
    check_instance,
    check_labels,
    check_representable,
    check_rtol,
    is_concrete,
)

if TYPE_CHECKING:
    from deeplinear.streaming import LinearStatistics

__all__ = [
    "InterceptTerms", "KernelEigenbasis", "RegressionData", "PredictionKernel", "check_regression_data",
    "linear_prediction_kernel",
]

_RESCALE_INPUTS = (
    "rescale the inputs (e.g. standardize the columns) or use float64 (jax_enable_x64 and dtype='float64')"
)
_RESCALE_GRAM = "rescale the Gram matrix or use float64 (jax_enable_x64 and dtype='float64')"
_RESCALE_LABELS = "rescale the labels (e.g. standardize them) or use float64 (jax_enable_x64 and dtype='float64')"
_RESCALE_TEST = "scale the test inputs as the training inputs were, or use float64"


def _to_device(x, dtype):
    """A host (NumPy) array as a JAX array of ``dtype``, converted on the host: converting on the
    device would compile a small program per shape and dtype in every new process."""
    return jax.device_put(np.asarray(x, dtype=dtype))


def canonical_signs(v: np.ndarray) -> np.ndarray:
    """``(R,)`` signs that make the largest-magnitude entry of each column of ``v`` positive."""
    idx = np.argmax(np.abs(v), axis=0)
    signs = np.sign(v[idx, np.arange(v.shape[1])])
    return np.where(signs == 0, 1.0, signs)


PSD_TOLERANCE = 1e-6  # eigenvalues below -PSD_TOLERANCE * max(kappa): the matrix is not PSD
JOINT_PSD_CHECK_MAX = 2000  # test inputs up to which the Schur complement's every eigenvalue is checked


def _joint_psd_tolerance(dtype) -> float:
    """Relative tolerance for the joint Gram matrix check (stored eigenpairs carry ``dtype`` rounding)."""
    return max(1e-8, 100 * float(np.finfo(dtype).eps))


MAX_JOINT_ENTRIES = 2**28  # entries of a dense (P*, P*) or (P* D, P* D) matrix built on request (1-2 GB)


@pytree_dataclass(eq=False)
class PredictionKernel:
    r"""Kernel quantities at test inputs (a pytree; build it with :meth:`RegressionData.prediction_kernel`).

    Per-input predictions need only ``O(P* R)`` numbers: the rotated cross-kernel and two
    diagonals. The dense ``P* x P*`` matrices of joint predictions are built only on request
    (:attr:`test_gram`, :attr:`residual_gram`), from a factor for the linear kernel.

    Attributes
    ----------
    rotated_cross : array ``(P*, R)``
        :math:`\tilde k = U_R^\top k_*`, one test input per row (:math:`k_* = K(X, X_*)`).
    test_diag : array ``(P*,)``
        :math:`k(x_*, x_*)`, the diagonal of the test-test Gram matrix :math:`k_{**}`.
    residual_diag : array ``(P*,)``
        The diagonal of :math:`k_\perp = k_{**} - \tilde k \operatorname{diag}(\kappa)^{-1}
        \tilde k^\top`, the part of :math:`k_{**}` the training inputs do not explain (the
        Schur complement; zero for test inputs in the span of the training inputs).
    test_root, residual_root : arrays ``(P*, N0)`` or None
        Linear kernel: factors with :math:`k_{**} = ` ``test_root @ test_root.T`` (``X_test/sqrt(N0)``)
        and :math:`k_\perp = ` ``residual_root @ residual_root.T`` (:math:`x_\perp/\sqrt{N_0}`).
    test_dense, residual_dense : arrays ``(P*, P*)`` or None
        User Gram matrix given in full: :math:`k_{**}` and :math:`k_\perp`.

    Notes
    -----
    :math:`k_\perp` is computed in float64, so the predictive covariance never subtracts nearly
    equal numbers in float32. Linear kernel: from :math:`x_\perp`, the component of :math:`x_*`
    outside the span of the training inputs (a squared norm: accurate to float64 even from
    float32-stored data). User Gram matrix: as the difference above, from the stored eigenpairs
    (with a float32 ``RegressionData`` its error is ~1e-7 of :math:`k_{**}`).
    """

    rotated_cross: Array
    test_diag: Array
    residual_diag: Array
    test_root: Array | None = None
    residual_root: Array | None = None
    test_dense: Array | None = None
    residual_dense: Array | None = None

    @property
    def num_test(self) -> int:
        """``P*``, the number of test inputs."""
        return self.test_diag.shape[0]

    @property
    def test_gram(self) -> Array:
        """:math:`k_{**}`, ``(P*, P*)``, built on request (joint predictions only)."""
        return self._dense(self.test_root, self.test_dense, "test_gram")

    @property
    def residual_gram(self) -> Array:
        r""":math:`k_\perp`, ``(P*, P*)``, built on request (joint predictions only)."""
        return self._dense(self.residual_root, self.residual_dense, "residual_gram")

    def _dense(self, root, dense, name):
        if dense is not None:
            return dense
        if root is None:
            raise ValueError(
                f"joint predictions need the full test Gram matrix: pass test_gram as a (P*, P*) matrix, "
                f"not only its diagonal ({name} is unavailable)"
            )
        check_joint_size(self.num_test)
        return root @ root.T


def check_joint_size(num_test: int, num_outputs: int = 1) -> None:
    """Refuse a dense joint quantity over ``P* D`` rows beyond ``MAX_JOINT_ENTRIES`` entries."""
    n = num_test * num_outputs
    if n * n > MAX_JOINT_ENTRIES:
        raise ValueError(
            f"a joint covariance over P* = {num_test} test inputs (x D = {num_outputs}) has {n * n:.3g} entries, "
            f"more than {MAX_JOINT_ENTRIES:.3g}; use the per-input covariance() and log_predictive_density(), "
            "or fewer test inputs at once"
        )


def _refuse_if_not_psd(kappa: np.ndarray, tolerance: float) -> None:
    """``ValueError`` unless the eigenvalues ``kappa`` of a Gram matrix have a positive maximum and
    none below ``-tolerance * max(kappa)`` (rounding makes a PSD matrix's zero eigenvalues tiny
    negatives; a kernel that is not PSD has real negative ones, which clipping would hide)."""
    top = kappa.max()
    if top <= 0:
        raise ValueError("K has no positive eigenvalue; a Gram matrix must be PSD and nonzero")
    if kappa.min() < -tolerance * top:
        raise ValueError(
            f"K must be positive semi-definite, but its smallest eigenvalue is {kappa.min():.3e} "
            f"(largest {top:.3e})"
        )


@pytree_dataclass(eq=False)
class KernelEigenbasis:
    r"""Nonzero eigenpairs of a training Gram matrix :math:`K` (``P x P``).

    Attributes
    ----------
    eigenvalues : array ``(R,)``
        :math:`\kappa_1..\kappa_R > 0`, the nonzero eigenvalues (``R = rank K``).
    eigenvectors : array ``(P, R)`` or None
        :math:`U_R`, orthonormal columns; ``None`` when set up by streaming (then ``num_rows``
        holds ``P``).
    input_projection : array ``(N0, R)`` or None
        Linear kernel only: :math:`X^\top U_R / N_0`, so that the rotated cross-kernel is
        :math:`\tilde k = ` ``X_test @ input_projection`` (one test input per row).
    num_rows : int or None
        ``P`` when ``eigenvectors`` is ``None`` (static).
    null_dimension : array ``()`` or None
        Only in the sampler's summary view (:meth:`RegressionData.for_sampling`): :math:`P - R` as a
        leaf, so that it is not part of the compiled program.

    Signs: each singular direction is oriented so that the largest-magnitude entry of its right
    singular vector (the column of ``input_projection``) is positive (linear kernel), so the
    in-memory and the streamed set-up give the same eigenbasis, not one up to signs.
    """

    eigenvalues: Array
    eigenvectors: Array | None
    input_projection: Array | None = None
    num_rows: int | None = static_field(default=None)
    null_dimension: Array | None = None

    @property
    def num_obs(self) -> int:
        """``P``, the number of training inputs."""
        return self.eigenvectors.shape[0] if self.eigenvectors is not None else typing.cast(int, self.num_rows)

    @property
    def has_rows(self) -> bool:
        """False for a basis built from streamed statistics (:mod:`deeplinear.streaming`), which
        keeps no per-row eigenvectors."""
        return self.eigenvectors is not None

    def require_rows(self, what: str) -> Array:
        """The per-row eigenvectors :math:`U_R` ``(P, R)``; a ``ValueError`` naming ``what`` when this
        basis has none (data set up by streaming)."""
        if self.eigenvectors is None:
            raise ValueError(
                f"{what} needs the per-row eigenvectors U_R (P x R), which data set up by streaming "
                "(RegressionData.from_chunks / from_statistics) do not keep"
            )
        return self.eigenvectors

    @property
    def rank(self) -> int:
        """``R``, the number of nonzero eigenvalues."""
        return self.eigenvalues.shape[0]

    @property
    def num_null(self) -> int:
        """``P - R``, the dimension of the kernel's null space (in the sampler's summary view: 1 when
        there is a null space, else 0; :attr:`null_count` holds the number)."""
        return self.num_obs - self.rank

    @property
    def null_count(self) -> Array | int:
        """:math:`P - R` as the log density uses it: :attr:`null_dimension` (a leaf) in the sampler's
        summary view, else :attr:`num_null`."""
        return self.num_null if self.null_dimension is None else self.null_dimension

    @classmethod
    def linear(cls, X: ArrayLike, dtype: DTypeLike | None = None, rtol: float | None = None) -> KernelEigenbasis:
        r"""Linear kernel :math:`K = X X^\top/N_0` from a thin SVD of ``X`` (``(P, N0)``).

        Singular values below ``rtol * s_max`` count as zero; the default ``rtol`` is
        ``max(N0, P) * eps(float64)`` (NumPy's ``matrix_rank`` rule).
        """
        dtype = check_dtype(dtype)
        X = check_inputs(X)
        rtol = check_rtol(rtol)
        p, n0 = X.shape
        check_representable("X", X, dtype, _RESCALE_INPUTS, squared=False)
        w, s, vt = np.linalg.svd(X, full_matrices=False)
        rtol = max(n0, p) * np.finfo(np.float64).eps if rtol is None else rtol
        keep = s > rtol * s.max() if s.max() > 0 else np.zeros_like(s, bool)
        if not keep.any():
            raise ValueError("X is zero: the linear kernel X X^T / N0 has rank 0")
        s, w, v = s[keep], w[:, keep], vt[keep].T
        w = w * canonical_signs(v)
        kappa = (s / np.sqrt(n0)) ** 2
        check_representable("the eigenvalues of the linear kernel X X^T / N0", kappa, dtype, _RESCALE_INPUTS,
                            positive=True)
        proj = X.T @ w / n0  # X^T U_R / N0 = V diag(s) / N0
        return cls(_to_device(kappa, dtype), _to_device(w, dtype), _to_device(proj, dtype))

    @classmethod
    def from_gram(cls, K: ArrayLike, dtype: DTypeLike | None = None, rtol: float | None = None) -> KernelEigenbasis:
        r"""Any symmetric PSD Gram matrix ``K`` (``P x P``), by ``eigh``.

        Eigenvalues below ``rtol * max(kappa)`` count as zero (default ``P * eps(float64)``).
        Eigenvalues below ``-1e-6 * max(kappa)`` mean ``K`` is not PSD: a ``ValueError``.
        """
        dtype = check_dtype(dtype)
        K = check_gram(K, "K")
        rtol = check_rtol(rtol)
        check_representable("K", K, dtype, _RESCALE_GRAM)
        kappa, u = np.linalg.eigh((K + K.T) / 2)
        _refuse_if_not_psd(kappa, PSD_TOLERANCE)
        top = kappa.max()
        rtol = K.shape[0] * np.finfo(np.float64).eps if rtol is None else rtol
        keep = kappa > rtol * top
        check_representable("the eigenvalues of K", kappa[keep], dtype, _RESCALE_GRAM, positive=True)
        return cls(_to_device(kappa[keep], dtype), _to_device(u[:, keep], dtype))

    def rotate(self, Y: jax.Array) -> tuple[jax.Array, jax.Array]:
        r"""Return :math:`\tilde Y = U_R^\top Y` ``(..., R, D)`` and the null-space scatter
        :math:`Y_\perp^\top Y_\perp` ``(..., D, D)``, :math:`Y_\perp = Y - U_R \tilde Y`, of labels ``Y``
        ``(..., P, D)``."""
        U = self.require_rows("rotating other labels").astype(Y.dtype)
        rotated = jnp.swapaxes(U, 0, 1) @ Y
        if self.num_null == 0:
            return rotated, jnp.zeros(Y.shape[:-2] + (Y.shape[-1], Y.shape[-1]), Y.dtype)
        resid = Y - U @ rotated
        return rotated, jnp.swapaxes(resid, -1, -2) @ resid

    def prediction_kernel_linear(self, X_test: ArrayLike, dtype: DTypeLike) -> PredictionKernel:
        """Linear kernel at test inputs ``X_test`` (``(P*, N0)``, validated), computed in float64."""
        X_test = np.asarray(X_test, np.float64)
        n0 = X_test.shape[1]
        check_representable("X_test", X_test, dtype, _RESCALE_TEST, squared=False)
        proj = np.asarray(self.input_projection, np.float64)  # X^T U_R / N0, (N0, R)
        span, _ = np.linalg.qr(proj)  # orthonormal basis of the training inputs' span
        outside = X_test - (X_test @ span) @ span.T  # x_perp, one per row
        scaled = X_test / np.sqrt(n0)
        test_diag = np.sum(scaled**2, axis=1)
        check_representable("the test Gram matrix X_test X_test^T / N0", test_diag, dtype, _RESCALE_TEST)
        outside = outside / np.sqrt(n0)
        return PredictionKernel(
            _to_device(X_test @ proj, dtype), _to_device(test_diag, dtype),
            _to_device(np.sum(outside**2, axis=1), dtype),
            test_root=_to_device(scaled, dtype), residual_root=_to_device(outside, dtype),
        )

    def prediction_kernel_gram(self, cross_gram: ArrayLike, test_gram: ArrayLike, dtype: DTypeLike) -> PredictionKernel:
        """User kernel: ``cross_gram`` :math:`K(X, X_*)` ``(P, P*)``; ``test_gram`` ``(P*, P*)``, or its
        diagonal ``(P*,)`` for per-input predictions only (validated)."""
        self.require_rows("a user kernel's cross_gram")
        U = np.asarray(self.eigenvectors, np.float64)
        kappa = np.asarray(self.eigenvalues, np.float64)
        cross_gram = np.asarray(cross_gram, np.float64)
        test_gram = np.asarray(test_gram, np.float64)
        check_representable("test_gram", test_gram, dtype, _RESCALE_GRAM)
        check_representable("cross_gram", cross_gram, dtype, _RESCALE_GRAM)
        cross = cross_gram.T @ U  # (P*, R)
        test_diag = test_gram if test_gram.ndim == 1 else np.diagonal(test_gram)
        # [[K, k*], [k*^T, k**]] is PSD iff k* lies in the span of K and the Schur complement is PSD
        tol = _joint_psd_tolerance(dtype)
        top = max(float(np.abs(test_diag).max()), np.finfo(np.float64).tiny)
        scale = np.sqrt(kappa.max() * top)
        outside = np.abs(cross_gram - U @ cross.T).max() if self.num_null else 0.0
        if outside > tol * scale:
            raise ValueError(
                "cross_gram and test_gram do not go with the training Gram matrix K: cross_gram has a part "
                f"in K's null space (max {outside:.3e}, relative {outside / scale:.1e}), so the joint Gram "
                "matrix [[K, cross_gram], [cross_gram^T, test_gram]] is not positive semi-definite; compute "
                "all three with the same kernel function"
            )
        resid_diag = test_diag - np.sum(cross**2 / kappa, axis=1)
        lowest = float(resid_diag.min())  # the diagonal always (O(P* R))
        resid = None
        if test_gram.ndim == 2:
            resid = test_gram - (cross / kappa) @ cross.T
            resid = (resid + resid.T) / 2
            if resid.shape[0] <= JOINT_PSD_CHECK_MAX:  # every eigenvalue: O(P*^3)
                lowest = min(lowest, float(np.linalg.eigvalsh(resid).min()))
        if lowest < -tol * top:
            raise ValueError(
                "cross_gram and test_gram cannot come from one kernel with the training Gram matrix K: the "
                "Schur complement test_gram - cross_gram^T K^+ cross_gram has the eigenvalue "
                f"{lowest:.3e} < 0 (max diagonal of test_gram {top:.3e}), so the joint Gram matrix "
                "[[K, cross_gram], [cross_gram^T, test_gram]] is not positive semi-definite; compute all three "
                "with the same kernel function"
            )
        resid_diag = np.maximum(resid_diag, 0.0)  # rounding below zero
        if resid is not None:
            np.fill_diagonal(resid, resid_diag)
        dense = {} if resid is None else {
            "test_dense": _to_device(test_gram, dtype), "residual_dense": _to_device(resid, dtype)
        }
        return PredictionKernel(
            _to_device(cross, dtype), _to_device(test_diag, dtype), _to_device(resid_diag, dtype), **dense
        )


@pytree_dataclass(eq=False)
class InterceptTerms:
    r"""What per-output intercepts :math:`\mu \in \mathbb R^D` need (theory.md §4), computed once
    in float64 at set-up. With intercepts the labels are :math:`Y - 1\mu^\top`, so

    * their rotation is :math:`\tilde Y - \tilde u\,\mu^\top`, :math:`\tilde u = U_R^\top 1`
      (``rotated_ones``, ``(R,)``);
    * their null-space scatter is :math:`S_c + n_1 (\mu - \hat\mu)(\mu - \hat\mu)^\top`, with
      :math:`1_\perp = 1 - U_R\tilde u`, :math:`n_1 = \|1_\perp\|^2` (``null_ones``),
      :math:`\hat\mu = Y_\perp^\top 1_\perp / n_1` (``null_mean``, ``(D,)``; 0 when :math:`n_1 = 0`) and the
      centred scatter :math:`S_c = S_\perp - n_1\hat\mu\hat\mu^\top` (``centred_null_scatter``, ``(D, D)``,
      formed in float64: no cancellation when the labels' mean is large),

    an :math:`O(R D)` update per evaluation."""

    rotated_ones: Array
    null_ones: Array
    null_mean: Array
    centred_null_scatter: Array

    @classmethod
    def build(cls, rotated_ones: ArrayLike, null_ones: float | np.ndarray, null_label_sums: ArrayLike,
              null_scatter: ArrayLike, num_obs: int, dtype: DTypeLike) -> InterceptTerms:
        r"""From :math:`\tilde u`, :math:`n_1`, :math:`Y_\perp^\top 1_\perp` and :math:`S_\perp` (float64)."""
        rotated_ones = np.asarray(rotated_ones, np.float64)
        null_ones = float(null_ones)
        sums = np.asarray(null_label_sums, np.float64)
        scatter = np.asarray(null_scatter, np.float64)
        if null_ones <= 1e-8 * num_obs:  # the constant lies in the span of K (to round-off): no null-space part
            null_ones, mean, centred = 0.0, np.zeros_like(sums), scatter
        else:
            mean = sums / null_ones
            centred = scatter - null_ones * np.outer(mean, mean)
            centred = (centred + centred.T) / 2
        return cls(_to_device(rotated_ones, dtype), _to_device(null_ones, dtype), _to_device(mean, dtype),
                   _to_device(centred, dtype))

    @classmethod
    def from_rows(cls, U: ArrayLike, Y: ArrayLike, rotated: ArrayLike, scatter: ArrayLike,
                  dtype: DTypeLike) -> InterceptTerms:
        """From the eigenvectors ``U`` ``(P, R)``, labels ``Y`` ``(P, D)``, their rotation and their
        null-space scatter (:func:`null_scatter`), in float64."""
        U, Y, rotated = (np.asarray(a, np.float64) for a in (U, Y, rotated))
        rotated_ones = U.sum(axis=0)
        ones_resid = 1.0 - U @ rotated_ones
        sums = Y.T @ ones_resid - rotated.T @ (U.T @ ones_resid)  # (Y - U rotated)^T 1_perp
        return cls.build(rotated_ones, ones_resid @ ones_resid, sums, scatter, U.shape[0], dtype)


@pytree_dataclass(eq=False)
class RegressionData:
    r"""Training data prepared once for fast likelihoods: the kernel eigenbasis, the labels
    ``Y`` (``(P, D)``), their rotation :math:`\tilde Y = U_R^\top Y` (``(R, D)``) and the ``D x D``
    null-space scatter :math:`S_\perp = Y_\perp^\top Y_\perp`, :math:`Y_\perp = Y - U_R \tilde Y` (its
    trace is the null-space energy :math:`\|Y_\perp\|_F^2`; a general output-noise covariance needs
    the whole matrix, theory.md §4).

    Build it with :meth:`linear` (inputs ``X``, linear kernel) or :meth:`from_gram` (your own
    Gram matrix). It is an immutable JAX pytree, so it can be an argument of a jitted function
    or of a NumPyro model.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(10, 3))     # P = 10 inputs, N0 = 3 features
    >>> Y = np.random.default_rng(1).normal(size=(10, 2))     # D = 2 outputs
    >>> data = RegressionData.linear(X, Y)
    >>> data.num_obs, data.num_outputs, data.basis.rank
    (10, 2, 3)
    """

    basis: KernelEigenbasis
    labels: Array | None
    rotated_labels: Array
    null_scatter: Array
    inputs: Array | None = None
    intercept_terms: InterceptTerms | None = None
    traced_gram: Array | None = None

    @property
    def null_energy(self) -> Array:
        r""":math:`\|Y_\perp\|_F^2 = \operatorname{tr} S_\perp`, the labels' energy in the null space of ``K``."""
        return jnp.trace(self.null_scatter)

    @property
    def num_outputs(self) -> int:
        """``D``."""
        return self.rotated_labels.shape[1]

    @property
    def num_obs(self) -> int:
        """``P``."""
        return self.basis.num_obs

    @property
    def num_features(self) -> int | None:
        """``N0`` for the linear kernel, else ``None``."""
        return None if self.basis.input_projection is None else self.basis.input_projection.shape[0]

    @property
    def dtype(self) -> np.dtype:
        """Floating dtype of the stored arrays; the precision of every computation on this data."""
        return self.rotated_labels.dtype

    @property
    def kernel_kind(self) -> str:
        """``"linear"``, ``"gram"`` or ``"learned"`` (:meth:`learned_gram`, :meth:`learned_features`)."""
        if self.traced_gram is not None:
            return "learned"
        return "linear" if self.basis.input_projection is not None else "gram"

    @property
    def has_rows(self) -> bool:
        """True when the per-row labels and eigenvectors are kept (in-memory set-up); False after a
        streamed set-up (:meth:`from_chunks`), which keeps only what the likelihood and the
        linear kernel's predictions need. LOO then needs the rows again
        (:func:`deeplinear.loo.loo` with ``rows=``)."""
        return self.labels is not None and self.basis.has_rows

    def require_rows(self, what: str) -> None:
        """A ``ValueError`` naming ``what`` when this data keeps no per-row labels and eigenvectors."""
        if not self.has_rows:
            raise ValueError(
                f"{what} needs the per-row labels and eigenvectors, which data set up by streaming "
                "(RegressionData.from_chunks / from_statistics) do not keep"
            )

    def for_sampling(self) -> RegressionData:
        r"""The data as the built-in model's log density reads them, which :func:`~deeplinear.fit`
        hands to the compiled sampler: the ``R``-sized summaries (rotated labels, null-space scatter,
        eigenvalues, intercept terms) and :math:`P - R` as a number (a leaf), with no per-row array.
        The sampler's programs then do not depend on ``P``: refits without some rows and other data
        of the same rank ``R``, ``D`` and precision reuse them (a linear kernel with ``N0 < P``: any
        ``P``). The static ``num_rows`` only says whether there is a null space (``R + 1`` if so,
        else ``R``); nothing in this view is per row. Data of a learned kernel (``traced_gram``, a
        ``P x P`` leaf) are returned as they are."""
        if self.traced_gram is not None:
            return self
        rank, null = self.basis.rank, self.basis.num_null
        basis = KernelEigenbasis(self.basis.eigenvalues, None, num_rows=rank + (1 if null else 0),
                                 null_dimension=_to_device(null, self.dtype) if null else None)
        return RegressionData(basis, None, self.rotated_labels, self.null_scatter, None, self.intercept_terms)

    def require_intercept_terms(self) -> InterceptTerms:
        """:attr:`intercept_terms`, or a ``ValueError`` when the data have none (set up by an old version)."""
        if self.intercept_terms is None:
            raise ValueError("intercepts need data.intercept_terms; set the data up with this version of deeplinear")
        return self.intercept_terms

    @classmethod
    def linear(cls, X: ArrayLike, Y: ArrayLike, dtype: DTypeLike | None = None,
               rtol: float | None = None) -> RegressionData:
        r"""Linear kernel :math:`K = X X^\top/N_0`; ``X`` is ``(P, N0)``, ``Y`` is ``(P, D)``."""
        dtype = check_dtype(dtype)
        X64 = check_inputs(X)
        Y64 = check_labels(Y)
        if Y64.shape[0] != X64.shape[0]:
            if X64.shape[1] == Y64.shape[0]:
                hint = f"X looks transposed (X is {X64.shape}, Y has {Y64.shape[0]} rows): pass X.T"
            elif Y64.shape[1] == X64.shape[0]:
                hint = f"Y looks transposed (X has {X64.shape[0]} rows, Y is {Y64.shape}): pass Y.T"
            else:
                hint = f"X is {X64.shape} and Y is {Y64.shape}"
            raise ValueError(f"X must be (P, N0) and Y (P, D), one observation per row, with the same P; {hint}")
        check_representable("Y", Y64, dtype, _RESCALE_LABELS, positive=True)
        basis = KernelEigenbasis.linear(X64, dtype, rtol)
        return cls._build(basis, Y64, dtype, inputs=_to_device(X64, dtype))

    @classmethod
    def from_gram(cls, K: ArrayLike, Y: ArrayLike, dtype: DTypeLike | None = None,
                  rtol: float | None = None) -> RegressionData:
        r"""User-supplied symmetric PSD Gram matrix ``K`` (``P x P``); ``Y`` is ``(P, D)``."""
        dtype = check_dtype(dtype)
        K = check_gram(K, "K")
        Y64 = check_labels(Y, num_obs=K.shape[0])
        check_representable("Y", Y64, dtype, _RESCALE_LABELS, positive=True)
        basis = KernelEigenbasis.from_gram(K, dtype, rtol)
        return cls._build(basis, Y64, dtype)

    @classmethod
    def learned_gram(cls, K: ArrayLike, Y: ArrayLike) -> RegressionData:
        r"""A Gram matrix ``K`` (``P x P``) that depends on latent parameters, built *inside* a NumPyro
        model (e.g. an RBF kernel whose lengthscale is sampled); ``Y`` is ``(P, D)``. Traceable:
        it runs under ``jit``, ``grad`` and NUTS, where :meth:`from_gram` (NumPy, with value checks)
        cannot.

        Every evaluation does a full ``eigh`` :math:`K = U\operatorname{diag}(\kappa)U^\top` in the
        precision of ``K`` (:math:`O(P^3)`; all ``P`` pairs are kept, so ``R = P`` and there is no
        null-space term; eigenvalues below zero by rounding are set to zero, so a noise variance
        ``> 0`` is needed). The eigendecomposition is not differentiated: ``eigh``'s derivative
        divides by eigenvalue gaps, which are zero or tiny for smooth kernels (an RBF kernel's
        trailing eigenvalues cluster at rounding level) and for repeated inputs. Instead
        :class:`~deeplinear.likelihood.KroneckerNormal` adds a term that is zero in value and whose
        gradient with respect to ``K`` is the exact one, free of gaps (theory.md §4, "Learned kernels"):

        .. math:: \frac{\partial \log p}{\partial K} = \frac{\lambda_*}{2}\, U\left(Z Q Z^\top
            - \operatorname{diag}_p \operatorname{tr}(C_p^{-1} Q)\right) U^\top,\qquad
            z_p = C_p^{-1} \tilde y_p,

        the rows :math:`z_p` of ``Z`` being the solved rotated labels (less the intercept). So first
        derivatives (what NUTS, HMC and SVI use) are exact; second derivatives through ``K`` are not.
        Cost per gradient: the ``eigh`` and two ``P x P`` products, :math:`O(P^3)`; measured on a 2-core
        CPU in float64 (``benchmarks/learned_kernel.py``, ``D = 2``): 0.15 s at ``P = 1000``, 0.9 s at
        ``P = 2000``, 3--4 times faster than a dense Cholesky of the ``DP x DP`` covariance (the gain
        grows as :math:`D^3`). A NUTS run takes thousands of gradients, so about a thousand inputs
        on a CPU. In float32 the gradient is less accurate than the dense route's (relative error
        5e-4 against 1.5e-5 at ``P = 1000``): use float64 beyond a few hundred inputs.

        Predictions from such data need the kernel at each draw's parameters and are not built in
        (:meth:`prediction_kernel` refuses); the fitted parameters are in the posterior.

        Examples
        --------
        >>> import jax.numpy as jnp, numpy as np
        >>> x = np.linspace(0, 1, 8)[:, None]
        >>> Y = np.sin(3 * x) @ np.ones((1, 2))
        >>> def rbf(ell):
        ...     return jnp.exp(-0.5 * (x - x.T) ** 2 / ell**2)
        >>> data = RegressionData.learned_gram(rbf(0.3), Y)
        >>> data.kernel_kind, data.basis.rank, data.basis.num_null
        ('learned', 8, 0)
        """
        K = jnp.asarray(K)
        if K.ndim != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"K must be a square (P, P) Gram matrix, got shape {K.shape}")
        if not jnp.issubdtype(K.dtype, jnp.floating):
            raise TypeError(f"K must be a real floating-point array, got dtype {K.dtype}")
        dtype = K.dtype
        P = K.shape[0]
        Y = jnp.asarray(Y, dtype)
        if Y.ndim != 2 or Y.shape[0] != P:
            raise ValueError(f"Y must be (P, D) with P = {P} rows (one observation per row), got shape {Y.shape}")
        if is_concrete(K) and not bool(jnp.all(jnp.isfinite(K))):
            raise ValueError("K must be finite, got NaN or infinite entries")
        if is_concrete(Y) and not bool(jnp.all(jnp.isfinite(Y))):
            raise ValueError("Y must be finite, got NaN or infinite entries")
        fixed = jax.lax.stop_gradient((K + K.T) / 2)
        kappa, U = jnp.linalg.eigh(fixed)
        if is_concrete(kappa):  # as from_gram refuses it; inside a model (traced) rounding is clipped
            _refuse_if_not_psd(np.asarray(kappa, np.float64),
                               max(PSD_TOLERANCE, 10 * P * float(jnp.finfo(dtype).eps)))
        kappa = jnp.clip(kappa, 0.0)
        rotated = U.T @ Y
        D = Y.shape[1]
        zero = jnp.zeros((D, D), dtype)
        ones = InterceptTerms(U.sum(axis=0), jnp.zeros((), dtype), jnp.zeros((D,), dtype), zero)
        return cls(KernelEigenbasis(kappa, U), Y, rotated, zero, None, ones, K)

    @classmethod
    def learned_features(cls, F: ArrayLike, Y: ArrayLike) -> RegressionData:
        r"""Features ``F`` (``(P, M)``, one input per row) that depend on latent parameters (e.g. a
        learned projection ``X @ W``), with the linear kernel :math:`K = F F^\top / M`, inside a
        model: :meth:`learned_gram` of that kernel (the same ``eigh`` per evaluation, :math:`O(P^3)`
        whatever ``M``; use :meth:`linear` for fixed features, whose set-up is :math:`O(P M^2)` once)."""
        F = jnp.asarray(F)
        if F.ndim != 2:
            raise ValueError(f"F must be a (P, M) feature matrix, one input per row, got shape {F.shape}")
        return cls.learned_gram(F @ F.T / F.shape[1], Y)

    @classmethod
    def from_statistics(cls, stats: LinearStatistics, dtype: DTypeLike | None = None,
                        rtol: float | None = None) -> RegressionData:
        r"""Linear-kernel data from streamed sufficient statistics
        (:class:`~deeplinear.streaming.LinearStatistics`), equal to :meth:`linear` on the same rows
        to round-off, without keeping any per-row array (``has_rows`` is False).

        With :math:`R_{11} = U_r S V^\top` (the leading ``N0 x N0`` block of ``R``):
        :math:`\kappa = s^2/N_0`, :math:`\tilde Y = U_r^\top R_{12}`, input projection
        :math:`V S/N_0`, null-space scatter :math:`R_{22}^\top R_{22} + E^\top E`, :math:`E = R_{12} - U_r\tilde Y`
        (:mod:`deeplinear.streaming`). ``rtol`` as in :meth:`KernelEigenbasis.linear`."""
        from deeplinear.streaming import LinearStatistics

        dtype = check_dtype(dtype)
        check_instance("stats", stats, LinearStatistics, "LinearStatistics.accumulate(chunks)")
        rtol = check_rtol(rtol)
        n0, P = stats.num_features, stats.num_rows
        check_representable("X", np.asarray(stats.input_range), dtype, _RESCALE_INPUTS, squared=False)
        check_representable("Y", np.asarray(stats.label_range), dtype, _RESCALE_LABELS, positive=True)
        r = stats.r_factor
        r11, r12, r22 = r[:n0, :n0], r[:n0, n0:], r[n0:, n0:]
        u, s, vt = np.linalg.svd(r11)
        rtol = max(n0, P) * np.finfo(np.float64).eps if rtol is None else rtol
        keep = s > rtol * s.max() if s.max() > 0 else np.zeros_like(s, bool)
        if not keep.any():
            raise ValueError("X is zero: the linear kernel X X^T / N0 has rank 0")
        s, u, v = s[keep], u[:, keep], vt[keep].T
        signs = canonical_signs(v)
        u, v = u * signs, v * signs
        kappa = (s / np.sqrt(n0)) ** 2
        check_representable("the eigenvalues of the linear kernel X X^T / N0", kappa, dtype, _RESCALE_INPUTS,
                            positive=True)
        rotated = u.T @ r12
        resid = r12 - u @ rotated
        D = r12.shape[1]
        null = r22.T @ r22 + resid.T @ resid if P > len(s) else np.zeros((D, D))
        ones = None
        if stats.input_sums is not None:  # intercepts: U_R = X V S^-1, so U_R^T 1 = S^-1 V^T (X^T 1)
            rotated_ones = (v.T @ stats.input_sums) / s
            ones = InterceptTerms.build(rotated_ones, P - rotated_ones @ rotated_ones,
                                        stats.label_sums - rotated.T @ rotated_ones, null, P, dtype)
        basis = KernelEigenbasis(_to_device(kappa, dtype), None, _to_device(v * s / n0, dtype), num_rows=P)
        return cls(basis, None, _to_device(rotated, dtype), _to_device(null, dtype), None, ones)

    @classmethod
    def from_chunks(cls, chunks: Chunks, dtype: DTypeLike | None = None, rtol: float | None = None) -> RegressionData:
        """Linear-kernel data in one streaming pass over ``chunks``, an iterable of ``(X_chunk, Y_chunk)``
        pairs (rows are observations), e.g. :class:`~deeplinear.streaming.ArrayChunks` over memmaps:
        :meth:`from_statistics` of :meth:`~deeplinear.streaming.LinearStatistics.accumulate`. Memory:
        one chunk."""
        from deeplinear.streaming import LinearStatistics

        dtype = check_dtype(dtype)
        rtol = check_rtol(rtol)
        return cls.from_statistics(LinearStatistics.accumulate(chunks), dtype, rtol)

    @classmethod
    def _build(cls, basis, Y64, dtype, inputs=None):
        U = np.asarray(basis.eigenvectors, np.float64)
        rotated = U.T @ Y64
        scatter = null_scatter(U, Y64, rotated)
        return cls(basis, _to_device(Y64, dtype), _to_device(rotated, dtype), _to_device(scatter, dtype), inputs,
                   InterceptTerms.from_rows(U, Y64, rotated, scatter, dtype))

    def prediction_kernel(self, X_test: ArrayLike | None = None, *, cross_gram: ArrayLike | None = None,
                          test_gram: ArrayLike | None = None) -> PredictionKernel:
        r"""Kernel quantities at test inputs: ``X_test`` (``(P*, N0)``) for the linear kernel, or
        ``cross_gram`` :math:`K(X, X_*)` (``(P, P*)``) and ``test_gram`` (``(P*, P*)``, or only its
        diagonal ``(P*,)``: enough for per-input predictions, in ``O(P* R)`` memory).

        The three Gram matrices must come from one kernel: ``cross_gram`` may have no part in the
        null space of ``K``, and the Schur complement :math:`k_{**} - k_*^\top K^+ k_*` may have no
        negative diagonal entry and, up to ``JOINT_PSD_CHECK_MAX`` (2,000) test inputs, no negative
        eigenvalue (beyond rounding); else a ``ValueError``."""
        dtype = self.dtype
        if self.kernel_kind == "learned":
            raise ValueError(
                "this data was built inside a model from a learned kernel (RegressionData.learned_gram / "
                "learned_features): its kernel depends on each draw's parameters, so predict from each "
                "draw's own Gram matrices (KroneckerNormal / conditional_predictive on data rebuilt per draw)"
            )
        if self.kernel_kind == "linear":
            if X_test is None or cross_gram is not None or test_gram is not None:
                raise ValueError("this data uses the linear kernel: pass X_test (P*, N0), not Gram matrices")
            X_test = check_inputs(X_test, "X_test", num_features=self.num_features)
            return self.basis.prediction_kernel_linear(X_test, dtype)
        if X_test is not None or cross_gram is None or test_gram is None:
            raise ValueError(
                "this data uses a user-supplied Gram matrix: pass cross_gram (P, P*) and test_gram (P*, P*) "
                "or its diagonal (P*,)"
            )
        cross = check_gram(cross_gram, "cross_gram", symmetric=False)
        if cross.shape[0] != self.num_obs:
            raise ValueError(f"cross_gram must have shape (P, P*) with P = {self.num_obs}, got {cross.shape}")
        if np.ndim(test_gram) == 1:  # the diagonal k(x*, x*) only: per-input predictions in O(P* R)
            test = check_gram(np.asarray(test_gram)[:, None], "test_gram", symmetric=False)[:, 0]
            if test.shape[0] != cross.shape[1]:
                raise ValueError(f"test_gram as a diagonal must have shape ({cross.shape[1]},), got {test.shape}")
        else:
            test = check_gram(test_gram, "test_gram", shape=(cross.shape[1],) * 2)
        return self.basis.prediction_kernel_gram(cross, test, dtype)

    def __repr__(self):
        streamed = "" if self.has_rows else ", streamed (no per-row arrays)"
        return (
            f"RegressionData(kernel={self.kernel_kind!r}, num_obs={self.num_obs}, "
            f"num_outputs={self.num_outputs}, rank={self.basis.rank}, dtype={self.dtype}{streamed})"
        )


def linear_prediction_kernel(data: RegressionData, X_test: ArrayLike) -> PredictionKernel:
    r"""The linear kernel's :class:`PredictionKernel` at ``X_test`` (``(P*, N0)``) in JAX: pure and
    jittable (``X_test`` may be traced), for use inside your own ``jit``/``vmap``.

    With :math:`V_R = ` ``input_projection`` :math:`\cdot \sqrt{N_0/\kappa}` the right singular
    vectors of the training inputs, :math:`\tilde k = X_* \,` ``input_projection``,
    :math:`x_\perp = x_* - V_R V_R^\top x_*`, ``test_diag`` :math:`= \|x_*\|^2/N_0` and
    ``residual_diag`` :math:`= \|x_\perp\|^2/N_0`. Computed in the data's precision (the
    validated :meth:`RegressionData.prediction_kernel` computes in float64 and checks magnitudes;
    this one does neither, as it may run under a trace).
    """
    basis = data.basis
    if basis.input_projection is None:
        raise ValueError("linear_prediction_kernel needs data built with RegressionData.linear(X, Y)")
    dtype = data.dtype
    X_test = jnp.asarray(X_test, dtype)
    n0 = basis.input_projection.shape[0]
    proj = basis.input_projection.astype(dtype)
    span = proj * jnp.sqrt(n0 / basis.eigenvalues.astype(dtype))  # V_R, orthonormal columns (N0, R)
    outside = (X_test - (X_test @ span) @ span.T) / jnp.sqrt(jnp.asarray(n0, dtype))
    scaled = X_test / jnp.sqrt(jnp.asarray(n0, dtype))
    return PredictionKernel(
        X_test @ proj, jnp.sum(scaled**2, axis=-1), jnp.sum(outside**2, axis=-1),
        test_root=scaled, residual_root=outside,
    )


def null_scatter(U, Y, rotated) -> np.ndarray:
    r""":math:`S_\perp = Y_\perp^\top Y_\perp` with :math:`Y_\perp = Y - U \tilde Y` (float64), ``(D, D)``;
    zero when ``U`` spans every row (no null space)."""
    U, Y, rotated = (np.asarray(a, np.float64) for a in (U, Y, rotated))
    if U.shape[1] >= U.shape[0]:
        return np.zeros((Y.shape[1], Y.shape[1]))
    resid = Y - U @ rotated
    return resid.T @ resid


def check_regression_data(data: object, name: str = "data") -> RegressionData:
    """``data`` is a :class:`RegressionData` (:func:`deeplinear._validation.check_instance`)."""
    return check_instance(
        name, data, RegressionData, "RegressionData.linear(X, Y) or RegressionData.from_gram(K, Y)"
    )
