r"""Fast exact Gamma variates for the Bartlett diagonals.

``jax.random.gamma`` runs a per-element rejection loop; on CPU it is ~30x slower than
``jax.random.normal`` and dominated prior sampling. Here Marsaglia & Tsang (2000) is
vectorized: one round over the whole array (acceptance > 95% for shape >= 1, ~99.9% for
the large shapes of wide layers), then only the rejected entries are redrawn, a small
compacted buffer of them per round, until every entry is accepted (exact: each entry is
redrawn independently until it passes the test).
Shapes ``alpha < 1`` use :math:`G(\alpha) = G(\alpha + 1)\,U^{1/\alpha}`.

:func:`standard_gamma` draws in blocks of :data:`GAMMA_BLOCK` entries, block ``b`` from
``fold_in(key, b)``: called with concrete arguments it runs one compiled block program per
precision for every shape (compiling that rejection sampler takes 0.5-0.8 s on a CPU, which every
new finite-width prior structure paid before: issue 27); in a trace it maps the same block
function over the blocks, so a key gives the same draws inside and outside ``jit``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from deeplinear._matmul import full_precision_jit

__all__ = ["GAMMA_BLOCK", "normal", "standard_gamma", "standard_gamma_with_info", "uniform"]

GAMMA_BLOCK = 1 << 14  # entries per block of standard_gamma (padding wastes < one block's draws, ~0.2 ms)


def normal(key, shape, dtype) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, drawn as one flat vector and reshaped.

    Under JAX's partitionable Threefry (the default) each entry's counter is its C-order index, so
    these are the same numbers as the shaped draw, bit for bit; but XLA compiles the counters of a
    shape of rank 2 or more far more slowly (a ``(1000, 16, 2)`` draw: 0.68 s against 0.21 s on a
    2-core CPU), and ``vmap`` adds a rank. Every multi-dimensional draw of the package goes through here."""
    shape = tuple(shape)
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def uniform(key, shape, dtype, minval=0.0, maxval=1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, drawn flat and reshaped (as :func:`normal`)."""
    shape = tuple(shape)
    return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)


def _candidates(key, d, c, shape, dtype):
    kx, ku = jax.random.split(key)
    x = normal(kx, shape, dtype)
    u = uniform(ku, shape, dtype, minval=jnp.finfo(dtype).tiny)
    v = (1 + c * x) ** 3
    ok = (v > 0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * jnp.log(jnp.where(v > 0, v, 1)))
    return d * v, ok


def standard_gamma(key, alpha, shape, dtype):
    r"""Exact draws of :math:`\mathrm{Gamma}(\alpha, 1)` with shape ``shape`` (``alpha`` broadcasts).

    The entries, in C order and padded with :math:`\alpha = 1` to whole blocks of
    :data:`GAMMA_BLOCK`, are drawn block by block (block ``b`` from ``fold_in(key, b)``) by
    :func:`standard_gamma_with_info`; the padding's draws are dropped."""
    shape = tuple(shape)
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    blocks = max(1, -(-n // GAMMA_BLOCK))
    pad = blocks * GAMMA_BLOCK - n
    if isinstance(key, jax.core.Tracer) or isinstance(alpha, jax.core.Tracer):
        flat = jnp.broadcast_to(jnp.asarray(alpha, dtype), shape).ravel()
        padded = jnp.concatenate([flat, jnp.ones((pad,), dtype)]).reshape(blocks, GAMMA_BLOCK)
        keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(blocks))
        out = jax.lax.map(lambda a: _gamma_block(*a), (keys, padded)).ravel()
        return out[:n].reshape(shape)
    flat = np.broadcast_to(np.asarray(alpha, dtype), shape).ravel()
    padded = np.concatenate([flat, np.ones((pad,), dtype)]).reshape(blocks, GAMMA_BLOCK)
    out = [np.asarray(_gamma_block_program(jax.random.fold_in(key, b), padded[b])) for b in range(blocks)]
    return jnp.asarray(np.concatenate(out)[:n].reshape(shape))


def _gamma_block(key, alpha):
    """One block of :func:`standard_gamma`: ``alpha`` ``(GAMMA_BLOCK,)``."""
    return standard_gamma_with_info(key, alpha, alpha.shape, alpha.dtype)[0]


_gamma_block_program = full_precision_jit(_gamma_block)  # one program per precision (and key type)


def standard_gamma_with_info(key, alpha, shape, dtype):
    """:func:`standard_gamma`, also returning the number of first-round rejections and the size
    of the compacted redo buffer (later rounds redraw at most that many entries each)."""
    alpha = jnp.broadcast_to(jnp.asarray(alpha, dtype), shape)
    boost = alpha < 1
    a = jnp.where(boost, alpha + 1, alpha)
    d = a - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    k_first, k_redo, k_boost = jax.random.split(key, 3)
    out, ok = _candidates(k_first, d, c, shape, dtype)
    flat_out, flat_ok = out.ravel(), ok.ravel()
    flat_d, flat_c = d.ravel(), c.ravel()
    size = flat_out.size
    buf = min(size, 64 + size // 64)  # compacted buffer for the rejected entries

    def redo_cond(state):
        return ~jnp.all(state[2])

    def redo_body(state):
        # Redraw the first `buf` entries still rejected (all of them, unless more than `buf`
        # were: then the next round takes the next ones), each until it is accepted.
        key, vals, done = state
        key, sub = jax.random.split(key)
        (idx,) = jnp.nonzero(~done, size=buf, fill_value=size)  # `size`: a slot with nothing to redo
        cand, good = _candidates(sub, flat_d[jnp.minimum(idx, size - 1)], flat_c[jnp.minimum(idx, size - 1)],
                                 idx.shape, dtype)
        target = jnp.where(good, idx, size)  # out of range: dropped
        return key, vals.at[target].set(cand, mode="drop"), done.at[target].set(True, mode="drop")

    n_rejected = jnp.sum(~flat_ok)
    _, flat_out, _ = jax.lax.while_loop(redo_cond, redo_body, (k_redo, flat_out, flat_ok))
    out = flat_out.reshape(shape)
    u = uniform(k_boost, shape, dtype, minval=jnp.finfo(dtype).tiny)
    return jnp.where(boost, out * u ** (1.0 / jnp.where(boost, alpha, 1.0)), out), n_rejected, buf
