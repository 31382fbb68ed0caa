r"""Linear algebra shared by the likelihood, the LOO terms and the predictive.

The eigenbasis blocks :math:`C_p = \lambda_*\kappa_p Q + \Sigma_\varepsilon` (theory.md §4; the
output-noise covariance :math:`\Sigma_\varepsilon` is :math:`\sigma^2 I_D` unless a noise factor is
given), their factors, a PSD square root, whitening by the noise, the one Gaussian
log-density of the package, and the batched map over draws that all of them run in.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

__all__ = [
    "LOG_2PI", "batched_map", "block_covariances", "block_cholesky_from_root", "gaussian_logpdf", "psd_root",
    "whiten_q", "whiten_rows",
]

LOG_2PI = math.log(2 * math.pi)


def batched_map(f, xs, batch_size: int):
    """``jax.lax.map(f, xs, batch_size=batch_size)`` with ``f`` once in the program.

    ``lax.map`` runs a length that ``batch_size`` does not divide as a scan over the whole batches
    plus a second, vmapped copy of ``f`` for the rest, which doubles the program's size and its
    compile time. Here the leading axis is padded to a multiple of the batch (repeating its first
    entry) and the padding's results are dropped: at most ``batch_size - 1`` extra evaluations."""
    n = jax.tree.leaves(xs)[0].shape[0]
    batch = max(1, min(batch_size, n))
    pad = -n % batch
    if pad:
        xs = jax.tree.map(lambda x: jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])]), xs)
    out = jax.lax.map(f, xs, batch_size=batch)
    return jax.tree.map(lambda y: y[:n], out) if pad else out


def gaussian_logpdf(x, chol):
    r""":math:`\log N(x; 0, LL^\top) = -\tfrac12\|L^{-1}x\|^2 - \sum_i \log|L_{ii}| - \tfrac n2 \log 2\pi`
    for ``x`` ``(..., n)`` and lower factors ``chol`` ``(..., n, n)`` (batch dims broadcast).
    Diagonal entries of ``chol`` may be negative (QR factors)."""
    z = solve_triangular(chol, x[..., None], lower=True)[..., 0]
    logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol, axis1=-2, axis2=-1))), axis=-1)
    return -0.5 * jnp.sum(z**2, axis=-1) - logdet - 0.5 * x.shape[-1] * LOG_2PI


def block_covariances(q, lambda_star, noise_variance, eigenvalues, noise_factor=None):
    r""":math:`C_p = \lambda_* \kappa_p Q + \sigma^2 I_D` for ``p = 1..R``, shape ``(..., R, D, D)``; with
    ``noise_factor`` :math:`L_\varepsilon` (``(..., D, D)``, lower) the noise term is
    :math:`\Sigma_\varepsilon = L_\varepsilon L_\varepsilon^\top` instead."""
    q = jnp.asarray(q)
    lam = jnp.asarray(lambda_star, q.dtype)[..., None, None, None]
    signal = lam * eigenvalues.astype(q.dtype)[:, None, None] * q[..., None, :, :]
    if noise_factor is not None:
        factor = jnp.asarray(noise_factor, q.dtype)
        return signal + (factor @ jnp.swapaxes(factor, -1, -2))[..., None, :, :]
    noise = jnp.asarray(noise_variance, q.dtype)[..., None, None, None]
    return signal + noise * jnp.eye(q.shape[-1], dtype=q.dtype)


def psd_root(q):
    r"""A square root :math:`W \operatorname{diag}(\sqrt{\max(w, 0)})` of symmetric ``q``
    ``(..., D, D)`` with eigendecomposition :math:`W \operatorname{diag}(w) W^\top` (rounding
    that makes tiny eigenvalues negative is clipped). For evaluation, not for gradients
    (``eigh``'s derivative is singular at repeated eigenvalues)."""
    w, v = jnp.linalg.eigh((q + jnp.swapaxes(q, -1, -2)) / 2)
    return v * jnp.sqrt(jnp.clip(w, 0))[..., None, :]


def block_cholesky_from_root(root, lambda_star, noise_variance, eigenvalues, noise_factor=None):
    r"""Lower factors :math:`L_p L_p^\top = C_p = \lambda_*\kappa_p\, V V^\top + \sigma^2 I_D` without
    forming :math:`C_p`: :math:`L_p^\top` is the triangular factor of the QR decomposition of the
    ``2D x D`` matrix :math:`[\sqrt{\lambda_*\kappa_p}\, V^\top;\ \sigma I_D]` (with ``noise_factor``
    :math:`L_\varepsilon`, ``(..., D, D)`` lower, the bottom block is :math:`L_\varepsilon^\top` and the
    noise term :math:`\Sigma_\varepsilon = L_\varepsilon L_\varepsilon^\top`).

    Square-root form: it never squares the condition number of ``V`` (``root``, any factor
    with :math:`Q = VV^\top`, e.g. :math:`\bar V`), so it stays finite where the Cholesky
    factorization of the formed :math:`C_p` fails -- e.g. float32 at large ``a``, where the
    eigenvalues of ``Q`` span tens of orders of magnitude and :math:`\sigma^2` is small.
    Diagonal entries may be negative; use :math:`\log|L_{ii}|`. Shape ``(..., R, D, D)``.
    """
    root = jnp.asarray(root)
    dtype = root.dtype
    D = root.shape[-1]
    lam = jnp.asarray(lambda_star, dtype)[..., None, None, None]
    top = jnp.sqrt(lam * eigenvalues.astype(dtype)[:, None, None]) * jnp.swapaxes(root, -1, -2)[..., None, :, :]
    if noise_factor is not None:
        bottom = jnp.swapaxes(jnp.asarray(noise_factor, dtype), -1, -2)[..., None, :, :]
    else:
        bottom = jnp.sqrt(jnp.asarray(noise_variance, dtype))[..., None, None, None] * jnp.eye(D, dtype=dtype)
    shape = jnp.broadcast_shapes(top.shape, bottom.shape)
    stacked = jnp.concatenate([jnp.broadcast_to(top, shape), jnp.broadcast_to(bottom, shape)], axis=-2)
    return jnp.swapaxes(jnp.linalg.qr(stacked, mode="r"), -1, -2)


def whiten_rows(x, noise_factor):
    r"""Rows of ``x`` ``(..., m, D)`` whitened by the noise, :math:`x_i \mapsto L_\varepsilon^{-1} x_i`
    (``noise_factor`` :math:`L_\varepsilon` lower, ``(D, D)``)."""
    return jnp.swapaxes(solve_triangular(noise_factor, jnp.swapaxes(x, -1, -2), lower=True), -1, -2)


def whiten_q(q, noise_factor):
    r""":math:`L_\varepsilon^{-1} Q L_\varepsilon^{-\top}`: in coordinates where the noise is
    :math:`I_D`, :math:`C_p = L_\varepsilon(\lambda_*\kappa_p \tilde Q + I)L_\varepsilon^\top`, so every
    formula for :math:`\sigma^2 = 1` applies to the whitened labels (theory.md §4)."""
    half = solve_triangular(noise_factor, q, lower=True)
    return solve_triangular(noise_factor, jnp.swapaxes(half, -1, -2), lower=True)
