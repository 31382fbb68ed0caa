r"""Matrix products at the working precision on every backend.

NVIDIA GPUs multiply float32 matrices in TF32 by default (a 10-bit mantissa: about three significant
digits), and TPUs in bfloat16. Gram matrices :math:`XX^\top/N_0`, the products :math:`\bar V\bar V^\top`
of the priors, the likelihood's quadratic forms :math:`\tilde y_p^\top C_p^{-1}\tilde y_p` and the
predictive's conditional covariances would then carry errors far beyond float32's :math:`10^{-7}`,
which the CPU tests' tolerances never see. So every program of the library is traced under
``jax.default_matmul_precision("highest")``: each product in it is recorded with precision
``HIGHEST`` (true float32; a no-op in float64 and on CPU).

Why a scope, not ``precision=HIGHEST`` at the call sites: the library's products are written with
``@`` and ``einsum``, and NumPyro's distributions and transforms (the LKJ and Cholesky transforms,
``MultivariateNormal``) multiply matrices inside, where no call site takes a precision. The scope
reaches them all, and as JAX records the precision per product when it traces, a program traced
under it keeps full precision whatever the backend's or the caller's default. It is entered where
the library's functions are traced -- its compiled programs (:func:`full_precision_jit`, and
:class:`deeplinear.cache.ReusedTraceJit`) and the functions that run inside other people's programs
(the NumPyro models and the likelihood) -- and it changes nothing outside them: no global state.
``tests/test_matmul_precision.py`` checks the lowered programs of a fit, a prediction, LOO, the
evidence and SBC for any product below ``HIGHEST``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

__all__ = ["MATMUL_PRECISION", "full_precision", "full_precision_jit"]

MATMUL_PRECISION = "highest"


def full_precision[**P, R](fun: Callable[P, R]) -> Callable[P, R]:
    """``fun`` run (and so traced) under ``jax.default_matmul_precision(MATMUL_PRECISION)``."""

    @functools.wraps(fun)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fun(*args, **kwargs)

    return wrapped


def full_precision_jit(fun=None, **jit_kwargs):
    """``jax.jit(full_precision(fun), **jit_kwargs)``; usable as a decorator, with or without keywords."""
    if fun is None:
        return functools.partial(full_precision_jit, **jit_kwargs)
    return jax.jit(full_precision(fun), **jit_kwargs)
