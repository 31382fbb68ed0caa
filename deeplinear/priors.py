r"""Priors over the mixing matrix :math:`\bar V` (and :math:`Q = \bar V \bar V^\top`).

A deep linear network with Gaussian weights has outputs (theory.md §2)

.. math::

    f(X) \overset{d}{=} \sqrt{\lambda_*/N_0}\; \bar V\, G\, X, \qquad
    \bar V = V^L V^{L-1} \cdots V^1,

with ``G`` a ``D x N0`` standard normal matrix. Everything about depth and width is
in the law of the lower-triangular ``D x D`` matrix :math:`\bar V`. This module gives
three such laws with one interface:

* :class:`FiniteWidthPrior` -- exact, Bartlett factors of ``Wishart_D(N_l, I/N_l)``;
* :class:`ProportionalLimitPrior` -- the ``L/N -> a`` limit, Brownian integrals;
* :class:`NNGPPrior` -- the infinite-width limit, :math:`\bar V = I`.

Each prior is an immutable JAX pytree (a frozen dataclass: ``==``, ``replace``, ``repr``) and is
defined by *named latent variables*
(:meth:`VbarPrior.latent_distributions`) and *one deterministic map* from latents to
:math:`\bar V` (:meth:`VbarPrior.vbar_from_latents`). Direct sampling
(:meth:`VbarPrior.sample_vbar`) and NumPyro models (:meth:`VbarPrior.numpyro_vbar`)
both go through that map, so what NUTS explores is exactly what the sampler draws.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import distributions as dist

from deeplinear._matmul import full_precision, full_precision_jit
from deeplinear._pytree import pytree_dataclass, static_field
from deeplinear._random import normal, standard_gamma
from deeplinear._types import ArrayLike, DTypeLike, KeyLike, Shape
from deeplinear._validation import (
    MAX_LIMIT_STEPS,
    check_choice,
    check_dtype,
    check_inputs,
    check_key,
    check_positive_int,
    check_positive_scalar,
    check_ratio,
    check_sample_shape,
    check_widths,
    is_concrete,
)

__all__ = ["VbarPrior", "FiniteWidthPrior", "ProportionalLimitPrior", "NNGPPrior", "bartlett_diag_gamma"]

LIMIT_SCHEMES = ("second-order", "euler")  # time discretizations of the limit simulator (docs/limit_timestep_error.md)
# Default time steps of the limit simulator for D > 1 (D = 1 is exact with one step), chosen from the
# exact time-step errors in docs/limit_timestep_error.md: second order at K = 16 is 4-12x closer to the
# limit in E[Q22^2] than Euler at K = 64 for a in {0.5, 1, 2}, with a quarter of the latents.
DEFAULT_LIMIT_STEPS = {"second-order": 16, "euler": 64}
LEGENDRE_NODES = 5  # Gauss-Legendre nodes of the second-order scheme's variance integral (exact to degree 9)


def _unit_interval_legendre(num_nodes: int):
    """Gauss-Legendre nodes and weights on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
    return (nodes + 1) / 2, weights / 2


def _limit_step_factors(log_diag, xi_offdiag, h, num_outputs: int, scheme: str):
    r"""One lower-triangular factor per time step of the limit simulator, ``(..., K, D, D)``.

    ``log_diag`` holds the exact diagonal log-increments :math:`\Delta Z_r` ``(..., K, D)`` and
    ``xi_offdiag`` standard normals ``(..., K, D(D-1)/2)`` (row-major strictly-lower order).

    * ``"euler"``: :math:`M_{rs} = \sqrt{h}\,\xi_{rs}`; weak error :math:`O(h)`.
    * ``"second-order"``: the step's exact propagator has, given the diagonal paths,
      :math:`\Phi_{rs} = \int_0^h e^{Z_r(h)-Z_r(u)} e^{Z_s(u)} dB_{rs}(u) + \sum_{s<k<r}
      \int_0^h e^{Z_r(h)-Z_r(u)} \Phi_{ks}(u)\, dB_{rk}(u)`. The first term is Gaussian with
      variance :math:`v_{rs}=\int_0^h e^{2(Z_r(h)-Z_r(u)) + 2Z_s(u)}du`; it is replaced by its
      mean given the step's endpoints (Brownian bridges, variance :math:`u(h-u)/(2h)` each),

      .. math:: \bar v_{rs} = h \int_0^1 e^{2\Delta Z_r (1-\sigma) + 2\Delta Z_s \sigma
                + 2h\sigma(1-\sigma)}\, d\sigma

      (Gauss-Legendre, ``LEGENDRE_NODES`` nodes). The iterated integrals are replaced, as in
      weak order-2 Itô-Taylor schemes, by :math:`\tfrac12 G_{rk} G_{ks}` with their missing
      variance :math:`h^2/4` each added to the Gaussian part:

      .. math:: M_{rs} = \sqrt{\bar v_{rs} + (r-s-1)h^2/4}\;\xi_{rs}
                + \tfrac12 \sum_{s<k<r} G_{rk} G_{ks}, \qquad G_{rs} = \sqrt{\bar v_{rs}}\,\xi_{rs}.

      Moments of one step then match the propagator's to :math:`O(h^3)` (second moments of the
      entries next to the diagonal exactly), so the weak error is :math:`O(h^2)`.
    """
    diag = jnp.exp(log_diag)
    if scheme == "euler":
        return _lower_triangular(diag, jnp.sqrt(h) * xi_offdiag, num_outputs)
    rows, cols = np.tril_indices(num_outputs, k=-1)
    sigma, weight = _unit_interval_legendre(LEGENDRE_NODES)
    sigma, weight = jnp.asarray(sigma, log_diag.dtype), jnp.asarray(weight, log_diag.dtype)
    z_r, z_s = _pick(log_diag, rows)[..., None], _pick(log_diag, cols)[..., None]  # (..., K, pairs, 1)
    exponent = 2 * z_r * (1 - sigma) + 2 * z_s * sigma + 2 * h * sigma * (1 - sigma)
    vbar = h * jnp.sum(weight * jnp.exp(exponent), axis=-1)  # (..., K, pairs)
    gaussian = _lower_triangular(jnp.zeros_like(diag), jnp.sqrt(vbar) * xi_offdiag, num_outputs)
    missing = jnp.asarray((rows - cols - 1) * 0.25, log_diag.dtype) * h * h
    inflated = jnp.sqrt(vbar + missing) * xi_offdiag
    iterated = 0.5 * _strictly_lower_entries(gaussian @ gaussian)  # sum over s < k < r of G_rk G_ks
    return _lower_triangular(diag, inflated + iterated, num_outputs)


def _one_hot_strictly_lower(num_outputs: int, dtype):
    """Constant ``(D(D-1)/2, D, D)`` array whose slice ``p`` is the unit matrix of the ``p``-th
    strictly-lower entry (row-major order). Multiplying by it and summing places or picks those
    entries elementwise (exact, and fused by XLA), which compiles to fewer kernels than index
    scatters and gathers."""
    rows, cols = np.tril_indices(num_outputs, k=-1)
    out = np.zeros((rows.size, num_outputs, num_outputs))
    out[np.arange(rows.size), rows, cols] = 1.0
    return jnp.asarray(out, dtype)


def _pick(values, index):
    """``values[..., index]`` for a constant integer ``index``, as an exact elementwise product
    with one-hot columns and a sum (no gather in the program or its gradient)."""
    one_hot = jnp.asarray(np.eye(values.shape[-1])[:, index], values.dtype)  # (n, len(index))
    return jnp.sum(values[..., :, None] * one_hot, axis=-2)


def _lower_triangular(diag, offdiag, num_outputs: int):
    """Assemble ``(..., D, D)`` lower-triangular matrices from diagonal ``(..., D)``
    and strictly-lower entries ``(..., D(D-1)/2)`` (row-major order)."""
    out = diag[..., :, None] * jnp.eye(num_outputs, dtype=diag.dtype)
    if num_outputs > 1:
        unit = _one_hot_strictly_lower(num_outputs, diag.dtype)
        out = out + jnp.sum(offdiag[..., :, None, None] * unit, axis=-3)
    return out


def _strictly_lower_entries(matrices):
    """The strictly-lower entries ``(..., D(D-1)/2)`` (row-major order) of ``(..., D, D)`` matrices."""
    D = matrices.shape[-1]
    return jnp.sum(matrices[..., None, :, :] * _one_hot_strictly_lower(D, matrices.dtype), axis=(-2, -1))


def _ordered_product(factors):
    r"""Left-ordered product :math:`M_K \cdots M_1` of factors ``(..., K, D, D)``.

    Multiplied pairwise in :math:`\lceil \log_2 K \rceil` rounds of batched products
    (:math:`M_2M_1, M_4M_3, \ldots`, then their products, ...; ``K`` padded with identities to
    a power of two): the same :math:`K - 1` products as a loop, in a program without one."""
    K, D = factors.shape[-3], factors.shape[-1]
    pad = (1 << max(K - 1, 0).bit_length()) - K
    if pad:
        eye = jnp.broadcast_to(jnp.eye(D, dtype=factors.dtype), factors.shape[:-3] + (pad, D, D))
        factors = jnp.concatenate([factors, eye], axis=-3)
    while factors.shape[-3] > 1:
        factors = factors[..., 1::2, :, :] @ factors[..., 0::2, :, :]
    return factors[..., 0, :, :]


class VbarPrior(abc.ABC):
    r"""Common interface of the priors over :math:`\bar V`.

    Subclasses define :meth:`latent_distributions` (named NumPyro distributions of
    the latents) and :meth:`vbar_from_latents` (the deterministic map). Shapes follow
    NumPyro: a latent drawn with ``sample_shape`` has shape
    ``sample_shape + event_shape``, and :math:`\bar V` has shape ``sample_shape + (D, D)``.
    """

    num_outputs: int

    @abc.abstractmethod
    def latent_distributions(self, dtype: DTypeLike | None = None) -> dict[str, dist.Distribution]:
        """Named latent distributions (each with all dimensions in its event shape)."""

    @abc.abstractmethod
    def vbar_from_latents(self, latents: dict[str, jax.Array]) -> jax.Array:
        r"""Deterministic, differentiable map from latents to :math:`\bar V` ``(..., D, D)``."""

    def expected_log_last_diagonal(self) -> float | None:
        r""":math:`E[\log \bar V_{DD}^2]`, the typical log-scale of ``Q``'s smallest direction
        (``None`` when it depends on a traced value)."""
        return 0.0

    def warn_if_underflows(self, dtype: DTypeLike | None, stacklevel: int = 3) -> None:
        r"""Warn (:class:`~deeplinear.PrecisionWarning`) when the typical :math:`\bar V_{DD}^2`
        is below the smallest normal number of ``dtype``: draws of ``Q`` are then singular (or
        zero) in that precision. Deep priors shrink ``Q``: for the limit
        :math:`\log \bar V_{DD}^2 \sim N(-aD, 2a)`, so float32 (smallest ``1.2e-38``,
        :math:`e^{-87}`) loses ``Q``'s last direction from :math:`aD \approx 87`, float64 from
        :math:`aD \approx 708`. With ``noise_variance > 0`` the likelihood stays finite (the
        labels are then explained by noise alone along that direction)."""
        from deeplinear._precision import PrecisionWarning

        mean = self.expected_log_last_diagonal()
        floor = float(np.log(np.finfo(dtype).tiny))
        if mean is not None and mean < floor:
            import warnings

            warnings.warn(
                f"{self!r}: the typical squared last diagonal of Vbar is exp({mean:.4g}), below the smallest "
                f"{np.dtype(dtype).name} number exp({floor:.0f}), so draws of Q are singular or zero in this "
                "precision. Use float64 (jax.config.update('jax_enable_x64', True)) or a shallower prior.",
                PrecisionWarning,
                stacklevel=stacklevel,
            )

    # -- sampling ---------------------------------------------------------------
    def sample_latents(self, key: KeyLike, sample_shape: Shape = (),
                       dtype: DTypeLike | None = None) -> dict[str, jax.Array]:
        """Draw the latents with an explicit PRNG ``key``; shapes ``sample_shape + event``."""
        key = check_key(key)
        sample_shape = check_sample_shape(sample_shape)
        dtype = check_dtype(dtype)
        dists = self.latent_distributions(dtype)
        keys = jax.random.split(key, max(len(dists), 1))
        return {name: self._draw_latent(k, d, sample_shape, dtype) for k, (name, d) in zip(keys, dists.items())}

    def _draw_latent(self, key, distribution, sample_shape, dtype) -> jax.Array:
        """One latent's draws for :meth:`sample_latents`: ``distribution.sample(key, sample_shape)``."""
        return distribution.sample(key, sample_shape)

    def sample_vbar(self, key: KeyLike, sample_shape: Shape = (), dtype: DTypeLike | None = None) -> jax.Array:
        r"""Exact draws of :math:`\bar V`, shape ``sample_shape + (D, D)``.

        Validated here, then drawn by one compiled function per prior structure, sample shape
        and precision (the ratio of the limit prior is an argument, not a constant); the finite
        prior draws its Gamma variates before, by one compiled program for every width and depth
        (:meth:`_presampled`)."""
        key, sample_shape, dtype = self._sampling_args(key, sample_shape, dtype)
        return _sample_vbar(self, self._presampled(key, sample_shape, dtype), sample_shape, dtype)

    def sample_q(self, key: KeyLike, sample_shape: Shape = (), dtype: DTypeLike | None = None) -> jax.Array:
        r"""Draws of :math:`Q = \bar V \bar V^\top`, shape ``sample_shape + (D, D)`` (compiled, as
        :meth:`sample_vbar`, whose draws for the same key these are)."""
        key, sample_shape, dtype = self._sampling_args(key, sample_shape, dtype)
        return _sample_q(self, self._presampled(key, sample_shape, dtype), sample_shape, dtype)

    def _presampled(self, key, sample_shape, dtype):
        """What the direct samplers' compiled functions draw from: the ``key`` (the latents are
        drawn in the program), or latents drawn before (:class:`FiniteWidthPrior`)."""
        return key

    def _sampling_args(self, key, sample_shape, dtype, stacklevel: int = 4):
        """Validated ``key``, ``sample_shape`` and ``dtype`` of the direct samplers, after the
        underflow warning (:meth:`warn_if_underflows`)."""
        dtype = check_dtype(dtype)
        self.warn_if_underflows(dtype, stacklevel=stacklevel)
        return check_key(key), check_sample_shape(sample_shape), np.dtype(dtype)

    def sample_outputs(self, key: KeyLike, X: ArrayLike, sample_shape: Shape = (), lambda_star: float = 1.0,
                       dtype: DTypeLike | None = None) -> jax.Array:
        r"""Draws of the network outputs :math:`f(X)` from the mixture representation.

        .. math:: f(X) = \sqrt{\lambda_*/N_0}\; X G^\top \bar V^\top, \qquad G_{ij} \sim N(0, 1),

        (``G`` is ``D x N0``; theory.md §2 writes the transpose :math:`\bar V G X^\top`), so that
        :math:`f(X) \mid Q \sim \mathcal{MN}_{P\times D}(0, K, \lambda_* Q)` with
        :math:`K = X X^\top / N_0`.

        Parameters
        ----------
        key : PRNG key or int
        X : array, shape ``(P, N0)``
            Inputs, one per row.
        sample_shape : int or tuple of int
        lambda_star : float
            Overall prior scale :math:`\lambda_* = \lambda_0 \cdots \lambda_L`.

        Returns
        -------
        array, shape ``sample_shape + (P, D)``
        """
        key, sample_shape, dtype = self._sampling_args(key, sample_shape, dtype)
        X = jnp.asarray(check_inputs(X), dtype)
        check_positive_scalar("lambda_star", lambda_star)
        k_vbar, k_g = jax.random.split(key)
        return _sample_outputs(self, self._presampled(k_vbar, sample_shape, dtype), k_g, X,
                               jnp.asarray(lambda_star, dtype), sample_shape, dtype)

    # -- NumPyro ----------------------------------------------------------------
    @full_precision
    def numpyro_vbar(self, prefix: str = "") -> jax.Array:
        r"""Sample the latents as named NumPyro sites and return :math:`\bar V`.

        For use inside a NumPyro model: each latent becomes the site
        ``prefix + name`` (see :meth:`latent_distributions`), and the returned
        :math:`\bar V` is the same deterministic function of them as in
        :meth:`sample_vbar`.
        """
        latents = {
            name: numpyro.sample(prefix + name, d) for name, d in self.latent_distributions().items()
        }
        return self.vbar_from_latents(latents)


@partial(full_precision_jit, static_argnames=("sample_shape", "dtype"))
def _sample_vbar(prior, key_or_latents, sample_shape, dtype):
    """Compiled :meth:`VbarPrior.sample_vbar` (arguments validated by the caller) from a key or
    from latents drawn before (a dict: :meth:`VbarPrior._presampled`); the prior is a pytree
    argument, so its static fields select the compiled program and a ratio is data."""
    latents = key_or_latents
    if not isinstance(latents, dict):
        latents = prior.sample_latents(key_or_latents, sample_shape, dtype)
    vbar = prior.vbar_from_latents(latents)
    return jnp.broadcast_to(vbar, sample_shape + vbar.shape[-2:]).astype(dtype)


@partial(full_precision_jit, static_argnames=("sample_shape", "dtype"))
def _sample_q(prior, key_or_latents, sample_shape, dtype):
    vbar = _sample_vbar(prior, key_or_latents, sample_shape, dtype)
    return vbar @ jnp.swapaxes(vbar, -1, -2)


@partial(full_precision_jit, static_argnames=("sample_shape", "dtype"))
def _sample_outputs(prior, key_or_latents, key_g, X, lambda_star, sample_shape, dtype):
    vbar = _sample_vbar(prior, key_or_latents, sample_shape, dtype)
    g = normal(key_g, sample_shape + (prior.num_outputs, X.shape[1]), dtype)
    scale = jnp.sqrt(lambda_star / X.shape[1])
    return scale * ((X @ jnp.swapaxes(g, -1, -2)) @ jnp.swapaxes(vbar, -1, -2))


def bartlett_diag_gamma(widths: Sequence[int], num_outputs: int, dtype: DTypeLike) -> tuple[jax.Array, jax.Array]:
    r"""Shape and rate of the squared Bartlett diagonals, ``(L, D)`` each:
    :math:`(V^l_{rr})^2 \sim \mathrm{Gamma}((N_l - r + 1)/2,\ \mathrm{rate}=N_l/2)`.

    The one definition of this law: the NumPyro site (:meth:`FiniteWidthPrior.latent_distributions`)
    and the fast sampler (:meth:`FiniteWidthPrior.sample_latents`) both read it from here."""
    n = jnp.asarray(widths, dtype)[:, None]  # (L, 1)
    r = jnp.arange(1, num_outputs + 1, dtype=dtype)[None, :]  # (1, D)
    return (n - r + 1) / 2, jnp.broadcast_to(n / 2, (len(widths), num_outputs))


@pytree_dataclass
class FiniteWidthPrior(VbarPrior):
    r"""Exact prior of a deep linear network with hidden widths ``N_1..N_L`` (theory.md §2).

    .. math::

        \bar V = V^L \cdots V^1, \qquad V^l = T^l/\sqrt{N_l},\qquad
        (T^l_{rr})^2 \sim \chi^2_{N_l - r + 1},\quad T^l_{rs} \sim N(0,1)\ (r > s),

    the Bartlett factors of :math:`V^l V^{l\top} \sim \mathrm{Wishart}_D(N_l, I_D/N_l)`.
    ``V^L`` belongs to the last hidden layer (the one next to the outputs).

    Latents (NumPyro sites, ``L`` layers, ``D`` outputs):

    * ``"bartlett_diag"``, shape ``(L, D)``: :math:`(V^l_{rr})^2 \sim
      \mathrm{Gamma}((N_l - r + 1)/2,\ \mathrm{rate}=N_l/2)`, mean about 1;
    * ``"bartlett_offdiag"``, shape ``(L, D(D-1)/2)``, only when ``D > 1``: standard
      normals :math:`\xi`, with :math:`V^l_{rs} = \xi/\sqrt{N_l}` (non-centered).

    Parameters
    ----------
    widths : sequence of int
        Hidden widths ``N_1, ..., N_L``, each ``>= num_outputs``.
    num_outputs : int
        Number of outputs ``D``.

    Examples
    --------
    >>> import jax
    >>> prior = FiniteWidthPrior.from_depth_width(depth=4, width=8, num_outputs=2)
    >>> prior.sample_q(jax.random.key(0), (3,)).shape
    (3, 2, 2)
    """

    widths: tuple[int, ...] = static_field()
    num_outputs: int = static_field()

    def __post_init__(self):
        num_outputs = check_positive_int("num_outputs", self.num_outputs)
        object.__setattr__(self, "num_outputs", num_outputs)
        object.__setattr__(self, "widths", check_widths(self.widths, num_outputs))

    @classmethod
    def from_depth_width(cls, depth: int, width: int, num_outputs: int) -> FiniteWidthPrior:
        """Equal widths: ``depth`` hidden layers of ``width`` units each."""
        depth = check_positive_int("depth", depth)
        width = check_positive_int("width", width)
        return cls((width,) * depth, num_outputs)

    @property
    def depth(self) -> int:
        """Number of hidden layers ``L``."""
        return len(self.widths)

    def expected_log_last_diagonal(self) -> float:
        r""":math:`\sum_l [\psi((N_l - D + 1)/2) + \log(2/N_l)]`, the mean of
        :math:`\log \bar V_{DD}^2` (a sum of log Gamma variables)."""
        from scipy.special import digamma

        n = np.asarray(self.widths, np.float64)
        return float(np.sum(digamma((n - self.num_outputs + 1) / 2) + np.log(2 / n)))

    def latent_distributions(self, dtype: DTypeLike | None = None) -> dict[str, dist.Distribution]:
        dtype = check_dtype(dtype)
        D = self.num_outputs
        out = {"bartlett_diag": dist.Gamma(*bartlett_diag_gamma(self.widths, D, dtype)).to_event(2)}
        if D > 1:
            shape = (self.depth, D * (D - 1) // 2)
            out["bartlett_offdiag"] = dist.Normal(jnp.zeros(shape, dtype), 1.0).to_event(2)
        return out

    def sample_latents(self, key: KeyLike, sample_shape: Shape = (),
                       dtype: DTypeLike | None = None) -> dict[str, jax.Array]:
        """As :meth:`VbarPrior.sample_latents`, with a fast exact vectorized Gamma sampler."""
        key = check_key(key)
        sample_shape = check_sample_shape(sample_shape)
        dtype = check_dtype(dtype)
        D = self.num_outputs
        concentration, rate = bartlett_diag_gamma(self.widths, D, dtype)
        k_diag, k_off = jax.random.split(key)
        shape = sample_shape + (self.depth, D)
        out = {"bartlett_diag": standard_gamma(k_diag, concentration, shape, dtype) / rate}
        if D > 1:
            off_shape = sample_shape + (self.depth, D * (D - 1) // 2)
            out["bartlett_offdiag"] = normal(k_off, off_shape, dtype)
        return out

    def _presampled(self, key, sample_shape, dtype):
        """The Bartlett latents, drawn here: their Gamma variates come from one compiled block
        program for every width and depth (:func:`deeplinear._random.standard_gamma`), so a new
        structure compiles only the product of its factors."""
        return self.sample_latents(key, sample_shape, dtype)

    def vbar_from_latents(self, latents: dict[str, jax.Array]) -> jax.Array:
        diag_sq = latents["bartlett_diag"]
        dtype = diag_sq.dtype
        D = self.num_outputs
        if D == 1:
            return jnp.prod(jnp.sqrt(diag_sq), axis=-2)[..., None]
        inv_sqrt_n = 1.0 / jnp.sqrt(jnp.asarray(self.widths, dtype))[:, None]
        factors = _lower_triangular(jnp.sqrt(diag_sq), latents["bartlett_offdiag"] * inv_sqrt_n, D)
        return _ordered_product(factors)

    def __repr__(self):
        w = self.widths
        ws = f"({w[0]},)*{len(w)}" if len(set(w)) == 1 and len(w) > 3 else repr(w)
        return f"FiniteWidthPrior(widths={ws}, num_outputs={self.num_outputs})"


@pytree_dataclass(eq=False)
class ProportionalLimitPrior(VbarPrior):
    r"""The proportional limit ``L, N -> inf`` with ``L/N -> a`` (theory.md §3).

    :math:`\bar V_\infty = Y(a)`, a lower-triangular matrix of Brownian stochastic
    integrals: :math:`Y_{rr}(t) = e^{Z_r(t)}` with :math:`Z_r(t) = -rt/2 + B_{rr}(t)/\sqrt2`
    (so :math:`\log \bar V_{rr} \sim N(-ar/2, a/2)` exactly), and for ``r > s``

    .. math:: Y_{rs}(t) = \sum_{k=s}^{r-1} \int_0^t e^{Z_r(t) - Z_r(u)}\, Y_{ks}(u)\, dB_{rk}(u).

    Simulated on ``num_steps = K`` steps of size ``h = a/K`` as
    :math:`\bar V \approx M_K \cdots M_1` (independent steps: the SDE is linear) with exact
    log-normal diagonal increments :math:`(M_k)_{rr} = \exp(\Delta Z_{kr})`,
    :math:`\Delta Z_{kr} = -rh/2 + \sqrt{h/2}\,\xi_{kr}`, so the diagonal of :math:`\bar V` is
    exact for every ``K``. The off-diagonal entries depend on ``scheme``:

    * ``"second-order"`` (default): :math:`(M_k)_{rs} = \sqrt{\bar v_{rs} + (r-s-1)h^2/4}\;
      \xi'_{k,rs} + \tfrac12\sum_{s<j<r} G_{rj} G_{js}` with :math:`G_{rs} = \sqrt{\bar v_{rs}}\,
      \xi'_{k,rs}` and :math:`\bar v_{rs} = h\int_0^1 e^{2\Delta Z_{kr}(1-\sigma) +
      2\Delta Z_{ks}\sigma + 2h\sigma(1-\sigma)} d\sigma`, the variance of the step's Wiener
      integral given its endpoints. Weak error :math:`O(h^2)`; default ``K = 16``.
    * ``"euler"``: :math:`(M_k)_{rs} = \sqrt{h}\,\xi'_{k,rs}`. Weak error :math:`O(h)`;
      default ``K = 64``.

    At ``K = 16`` the second-order scheme is 4-12x closer to the limit in :math:`E[Q_{22}^2]`
    than Euler at ``K = 64`` for ``a`` in {0.5, 1, 2}, and exact in :math:`E[Q]` and
    :math:`E[Q_{12}^2]` for ``D = 2`` (``docs/limit_timestep_error.md``).

    Latents (standard normals, non-centered, so the map is differentiable in ``a``):

    * ``"brownian_diag"``, shape ``(K, D)``;
    * ``"brownian_offdiag"``, shape ``(K, D(D-1)/2)``, only when ``D > 1``.

    Parameters
    ----------
    ratio : float or scalar array
        Depth-to-width ratio ``a > 0``. May be a traced value (e.g. a NumPyro sample),
        in which case it is not validated.
    num_outputs : int
        Number of outputs ``D``.
    num_steps : int, optional
        Time steps ``K`` of the simulation. Default: 1 for ``D = 1`` (the diagonal, and so
        :math:`\bar V`, is exact for any ``K``); otherwise 16 with the second-order scheme and
        64 with Euler.
    scheme : {"second-order", "euler"}, default "second-order"
        Time discretization of the off-diagonal integrals (above). ``"euler"`` reproduces the
        simulator of deeplinear 0.1.

    ``ratio`` is a pytree leaf (it may be traced: ``prior.replace(ratio=numpyro.sample(...))``);
    ``num_outputs``, ``num_steps`` and ``scheme`` are static. Two priors are equal when their static fields
    and concrete ratios are.
    """

    ratio: jax.Array | float
    num_outputs: int = static_field()
    num_steps: int | None = static_field(default=None)
    scheme: str = static_field(default="second-order")

    def __post_init__(self):
        check_ratio(self.ratio)
        num_outputs = check_positive_int("num_outputs", self.num_outputs)
        scheme = check_choice("scheme", self.scheme, LIMIT_SCHEMES)
        default = 1 if num_outputs == 1 else DEFAULT_LIMIT_STEPS[scheme]
        steps = default if self.num_steps is None else self.num_steps
        object.__setattr__(self, "num_outputs", num_outputs)
        order = "ratio / num_steps" if scheme == "euler" else "(ratio / num_steps)^2"
        steps = check_positive_int(
            "num_steps", steps, maximum=MAX_LIMIT_STEPS,
            why=f" (every draw holds (num_steps, D) latents; the weak error is O({order}))",
        )
        object.__setattr__(self, "num_steps", steps)

    def __eq__(self, other):
        if not isinstance(other, ProportionalLimitPrior):
            return NotImplemented
        if (self.num_outputs, self.num_steps, self.scheme) != (other.num_outputs, other.num_steps, other.scheme):
            return False
        if is_concrete(self.ratio) and is_concrete(other.ratio):
            return bool(np.asarray(self.ratio) == np.asarray(other.ratio))
        return self.ratio is other.ratio

    def __hash__(self):
        ratio = float(np.asarray(self.ratio)) if is_concrete(self.ratio) else id(self.ratio)
        return hash((ProportionalLimitPrior, ratio, self.num_outputs, self.num_steps, self.scheme))

    def expected_log_last_diagonal(self) -> float | None:
        r""":math:`-aD`, the mean of :math:`\log \bar V_{DD}^2 \sim N(-aD, 2a)` (exact for every ``K``)."""
        if not is_concrete(self.ratio):
            return None
        return -float(np.asarray(self.ratio)) * self.num_outputs

    def latent_distributions(self, dtype: DTypeLike | None = None) -> dict[str, dist.Distribution]:
        dtype = check_dtype(dtype)
        D, K = self.num_outputs, self.num_steps
        out = {"brownian_diag": dist.Normal(jnp.zeros((K, D), dtype), 1.0).to_event(2)}
        if D > 1:
            out["brownian_offdiag"] = dist.Normal(jnp.zeros((K, D * (D - 1) // 2), dtype), 1.0).to_event(2)
        return out

    def _draw_latent(self, key, distribution, sample_shape, dtype) -> jax.Array:
        """The latents are standard normal: the same draws as ``distribution.sample``, drawn flat
        (:func:`deeplinear._random.normal`), which compiles faster."""
        return normal(key, sample_shape + distribution.event_shape, dtype)

    def vbar_from_latents(self, latents: dict[str, jax.Array]) -> jax.Array:
        xi = latents["brownian_diag"]
        dtype = xi.dtype
        D, K = self.num_outputs, self.num_steps
        assert K is not None  # None (the default) is replaced by __post_init__
        h = jnp.asarray(self.ratio, dtype) / K
        r = jnp.arange(1, D + 1, dtype=dtype)
        log_diag = -r * h / 2 + jnp.sqrt(h / 2) * xi  # (..., K, D)
        if D == 1:
            return jnp.exp(jnp.sum(log_diag, axis=-2))[..., None]
        return _ordered_product(_limit_step_factors(log_diag, latents["brownian_offdiag"], h, D, self.scheme))

    def __repr__(self):
        return (
            f"ProportionalLimitPrior(ratio={self.ratio!r}, num_outputs={self.num_outputs}, "
            f"num_steps={self.num_steps}, scheme={self.scheme!r})"
        )


@pytree_dataclass
class NNGPPrior(VbarPrior):
    r"""The infinite-width (NNGP) limit at fixed depth: :math:`\bar V = Q = I_D` (theory.md §6).

    Outputs are independent Gaussian processes with kernel :math:`\lambda_* K`. There are
    no latents; :meth:`numpyro_vbar` samples nothing.
    """

    num_outputs: int = static_field()

    def __post_init__(self):
        object.__setattr__(self, "num_outputs", check_positive_int("num_outputs", self.num_outputs))

    def latent_distributions(self, dtype: DTypeLike | None = None) -> dict[str, dist.Distribution]:
        return {}

    def vbar_from_latents(self, latents: dict[str, jax.Array]) -> jax.Array:
        return jnp.eye(self.num_outputs, dtype=check_dtype(None))

    def __repr__(self):
        return f"NNGPPrior(num_outputs={self.num_outputs})"
