r"""Brute-force simulation of actual deep linear networks: the ground truth.

Draw every weight matrix and push the inputs through (theory.md §1):

.. math::

    h^1 = X W^{1\top},\quad h^l = h^{l-1} W^{l\top},\quad f(X) = h^L W^{L+1\top},\qquad
    W^l_{ij} \sim N(0, \lambda_{l-1}/N_{l-1}),

with inputs as rows (``X`` is ``(P, N0)``; theory.md writes the transpose).

This costs :math:`O(\sum_l N_l N_{l-1} P)` per network and is what the Bartlett route
of :mod:`deeplinear.priors` replaces; the test suite and the prior benchmark compare
against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import distributions as dist

from deeplinear._linalg import batched_map
from deeplinear._matmul import full_precision_jit
from deeplinear._random import normal
from deeplinear._types import ArrayLike, DTypeLike, KeyLike, Shape
from deeplinear._validation import (
    check_dtype,
    check_inputs,
    check_key,
    check_positive_int,
    check_positive_scalar,
    check_sample_shape,
    check_widths,
)

__all__ = ["sample_network_outputs", "weight_space_model"]


def _network_forward(key, X, widths: tuple[int, ...], num_outputs: int, layer_scales=None):
    r"""One random network's outputs :math:`f(X)` (shape ``(P, D)``); the jit-able core of
    :func:`sample_network_outputs` (arguments validated there).

    ``layer_scales`` are :math:`\lambda_0, \ldots, \lambda_L` (default all ones).
    Equal hidden widths are scanned (one compiled layer, its weights drawn per step); unequal ones are
    unrolled, with every layer's weights drawn at once, one flat vector cut into the layers (one
    random-bit generator in the program instead of one per layer: under ``vmap`` each compiles for
    about half a second on a 2-core CPU).
    """
    N0 = X.shape[1]
    dims = (N0, *widths, num_outputs)
    L = len(widths)
    scales = jnp.ones(L + 1, X.dtype) if layer_scales is None else jnp.asarray(layer_scales, X.dtype)

    def layer(h, k, n_out, n_in, lam):
        w = normal(k, (n_out, n_in), X.dtype) * jnp.sqrt(lam / n_in)
        return h @ w.T

    if not _scanned(widths):
        sizes = [dims[l + 1] * dims[l] for l in range(L + 1)]
        z = normal(key, (sum(sizes),), X.dtype)
        h, start = X, 0
        for l in range(L + 1):
            w = z[start:start + sizes[l]].reshape(dims[l + 1], dims[l]) * jnp.sqrt(scales[l] / dims[l])
            h, start = h @ w.T, start + sizes[l]
        return h
    keys = jax.random.split(key, L + 1)
    h = layer(X, keys[0], dims[1], dims[0], scales[0])
    n = widths[0]

    def step(h, inputs):
        k, lam = inputs
        return layer(h, k, n, n, lam), None

    h, _ = jax.lax.scan(step, h, (keys[1:L], scales[1:L]))
    return layer(h, keys[L], dims[L + 1], dims[L], scales[L])


def _scanned(widths: tuple[int, ...]) -> bool:
    """Whether :func:`_network_forward` scans the hidden layers (equal widths, more than one)."""
    return len(widths) > 1 and len(set(widths)) == 1


@partial(full_precision_jit, static_argnames=("widths", "num_outputs", "num_samples", "batch_size"))
def _sample(key, X, layer_scales, widths, num_outputs, num_samples, batch_size):
    keys = jax.random.split(key, num_samples)
    fwd = partial(_network_forward, X=X, widths=widths, num_outputs=num_outputs, layer_scales=layer_scales)
    return batched_map(lambda k: fwd(k), keys, batch_size)


def sample_network_outputs(
    key: KeyLike,
    X: ArrayLike,
    widths: Sequence[int],
    num_outputs: int,
    sample_shape: Shape = (),
    layer_scales: Sequence[float] | None = None,
    dtype: DTypeLike | None = None,
    batch_size: int | None = None,
) -> jax.Array:
    r"""Outputs of independently drawn deep linear networks, one per entry of ``sample_shape``.

    Parameters
    ----------
    key : PRNG key or int
    X : array, shape ``(P, N0)``
        Inputs, one per row.
    widths : sequence of int
        Hidden widths ``N_1..N_L`` (any positive integers; no ``N_l >= D`` needed here).
    num_outputs : int
        ``D``.
    sample_shape : int or tuple of int
        Number (shape) of networks.
    layer_scales : sequence of float, optional
        :math:`\lambda_0..\lambda_L` (length ``L + 1``); weights of layer ``l`` have
        variance :math:`\lambda_{l-1}/N_{l-1}`. Default: all ones (:math:`\lambda_* = 1`).
    dtype : float32 or float64, optional
    batch_size : int, optional
        Networks simulated at once (memory ``~ batch_size * max N_l^2``). Default:
        chosen so one batch holds about ``2**24`` weights.

    Returns
    -------
    array, shape ``sample_shape + (P, D)``
    """
    key = check_key(key)
    dtype = check_dtype(dtype)
    X = jnp.asarray(check_inputs(X), dtype)
    num_outputs = check_positive_int("num_outputs", num_outputs)
    sample_shape = check_sample_shape(sample_shape)
    num_samples = math.prod(sample_shape)
    widths = check_widths(widths)
    scales = None if layer_scales is None else np.asarray(layer_scales, dtype=float)
    if scales is not None:
        if scales.shape != (len(widths) + 1,):
            raise ValueError(
                f"layer_scales must have length L + 1 = {len(widths) + 1} (lambda_0..lambda_L), "
                f"got shape {scales.shape}"
            )
        for i, lam in enumerate(scales):
            check_positive_scalar(f"layer_scales[{i}]", float(lam))
    if batch_size is None:
        layers = [w * v for w, v in zip((X.shape[1], *widths), (*widths, num_outputs))]
        per_net = max(layers) if _scanned(widths) else sum(layers)  # weights held at once per network
        batch_size = max(1, min(num_samples, 2**24 // per_net))
    batch_size = check_positive_int("batch_size", batch_size)
    if num_samples == 0:
        return jnp.zeros(sample_shape + (X.shape[0], num_outputs), dtype)
    out = _sample(key, X, scales, widths, num_outputs, num_samples, min(batch_size, num_samples))
    return out.reshape(sample_shape + out.shape[1:])


def weight_space_model(X: jax.Array, Y: jax.Array | None = None, *, widths: Sequence[int], num_outputs: int,
                       lambda_star: float = 1.0, noise_variance: float = 1.0, X_test: jax.Array | None = None,
                       noise_covariance: jax.Array | None = None) -> None:
    r"""NumPyro model of the actual network, every weight a latent: the brute-force posterior.

    .. math::

        W^l = \sqrt{\lambda_{l-1}/N_{l-1}}\, Z^l,\quad Z^l_{ij} \sim N(0, 1),\qquad
        Y \sim N(X W^{1\top} \cdots W^{L+1\top},\ \sigma^2 I)\quad
        (\text{rows } N(\cdot, \Sigma_\varepsilon) \text{ with ``noise_covariance``}),

        with :math:`\lambda_0 = \lambda_*` and the other :math:`\lambda_l = 1`. Sites ``"Z1"``..
    ``"Z{L+1}"`` (non-centered weights), deterministic ``"f_test"`` (``(P*, D)``, the outputs at
    ``X_test``) and observed ``"Y"`` (``(P, D)``); ``X`` is ``(P, N0)``. NUTS on it is what deeplinear's ``Q``-space
    posterior replaces; the tests and ``benchmarks/posterior_vs_weights.py`` compare the two.
    """
    dims = (X.shape[1], *widths, num_outputs)
    h, ht = X, X_test
    for l in range(len(dims) - 1):
        n_in, n_out = dims[l], dims[l + 1]
        z = numpyro.sample(f"Z{l + 1}", dist.Normal(jnp.zeros((n_out, n_in), X.dtype), 1.0).to_event(2))
        scale = jnp.sqrt((lambda_star if l == 0 else 1.0) / n_in)
        h = scale * (h @ z.T)
        if ht is not None:
            ht = scale * (ht @ z.T)
    if ht is not None:
        numpyro.deterministic("f_test", ht)
    if noise_covariance is not None:
        numpyro.sample("Y", dist.MultivariateNormal(h, covariance_matrix=noise_covariance).to_event(1), obs=Y)
    else:
        numpyro.sample("Y", dist.Normal(h, jnp.sqrt(noise_variance)).to_event(2), obs=Y)
