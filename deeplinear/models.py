r"""NumPyro models of a deep linear network under a Gaussian likelihood (theory.md §4).

.. math::

    \bar V \sim \text{prior}, \quad Q = \bar V \bar V^\top, \quad
    \operatorname{vec} Y^\top \mid Q, \lambda_*, \sigma^2 \sim N(0, \lambda_* Q \otimes K + \sigma^2 I),

with the network's outputs ``f`` integrated out analytically and labels ``Y`` ``(P, D)``, one
observation per row. The same model serves the three priors (finite width, proportional
limit, NNGP); ``lambda_star``, ``noise_variance`` and, for the proportional limit, ``ratio`` are
fixed numbers or NumPyro distributions (then they are inferred).

:class:`ModelSpec` is that configuration -- prior and hyperparameters -- validated once and
immutable. :func:`~deeplinear.fit`, :func:`~deeplinear.simulation_based_calibration`,
:func:`~deeplinear.save_fit`/:func:`~deeplinear.load_fit` and the command line all take or build
one; :meth:`ModelSpec.to_dict`/:meth:`ModelSpec.from_dict` (and JSON) are the one way to write it
down and read it back.

Output noise (``noise_model``): ``"scalar"`` (:math:`\sigma^2 I_D`, the default),
``"diagonal"`` (per-output variances :math:`\operatorname{diag}(\sigma_1^2, \ldots, \sigma_D^2)`) or
``"full"`` (:math:`\Sigma_\varepsilon = \operatorname{diag}(\sigma)\,\Omega\,\operatorname{diag}(\sigma)` with
a correlation matrix :math:`\Omega`, fixed or with an LKJ prior), each fixed or inferred; the
likelihood is :math:`N(0, \lambda_* Q\otimes K + \Sigma_\varepsilon\otimes I)` at the same cost
(theory.md §4).

Sites: the prior's latents (``bartlett_*`` or ``brownian_*``), ``"ratio"``, ``"lambda_star"``,
``"noise_variance"`` when given priors (shape ``(D,)`` for per-output and full noise), for full
noise with an LKJ prior ``"noise_correlation_cholesky"`` and the deterministic
``"noise_correlation"``, for non-scalar noise the deterministic ``"noise_covariance"``
``(D, D)``, the deterministic ``"Q"``, and the observed ``"Y"`` (``(P, D)``).

Building blocks for your own models: :func:`numpyro_q` (creates the prior's latent sites and
returns ``Q``; for direct draws use ``prior.sample_q(key, shape)``) and
:class:`~deeplinear.likelihood.KroneckerNormal` (the likelihood).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import typing
from collections.abc import Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import distributions as dist

from deeplinear._arrays import on_device
from deeplinear._matmul import full_precision
from deeplinear._pytree import pytree_dataclass, static_field
from deeplinear._types import (
    ArrayLike,
    DTypeLike,
    InterceptLike,
    NoiseCorrelationLike,
    NoiseVarianceLike,
    ScaleLike,
)
from deeplinear._validation import (
    check_choice,
    check_hyperprior,
    check_noise_covariance,
    check_noise_for_data,
    check_positive_scalar,
    describe,
)
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.likelihood import KroneckerNormal
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, VbarPrior

__all__ = ["ModelSpec", "arviz_dims_and_coords", "deep_linear_model", "numpyro_q"]

HYPERPARAMETERS = ("lambda_star", "noise_variance", "ratio")
NOISE_MODELS = ("scalar", "diagonal", "full")
DEFAULT_LKJ_CONCENTRATION = 1.0  # uniform over correlation matrices


@full_precision
def numpyro_q(prior: VbarPrior, *, prefix: str = "", name: str | None = "Q",
              dtype: DTypeLike | None = None) -> jax.Array:
    r"""Create the prior's latent NumPyro sites and return :math:`Q = \bar V \bar V^\top` ``(D, D)``.

    For use inside a NumPyro model (it calls ``numpyro.sample``); records ``Q`` as a
    deterministic site called ``prefix + name`` (skip with ``name=None``). Direct draws without
    a model: ``prior.sample_q(key, sample_shape)``.
    """
    if not isinstance(prior, VbarPrior):
        raise TypeError(f"prior must be a FiniteWidthPrior, ProportionalLimitPrior or NNGPPrior, got {describe(prior)}")
    vbar = prior.numpyro_vbar(prefix)
    if dtype is not None:
        vbar = vbar.astype(dtype)
    q = vbar @ jnp.swapaxes(vbar, -1, -2)
    if name is not None:
        q = numpyro.deterministic(prefix + name, q)
    return q


def _prior_to_dict(prior) -> dict:
    if isinstance(prior, FiniteWidthPrior):
        return {"kind": "finite", "widths": list(prior.widths), "num_outputs": prior.num_outputs}
    if isinstance(prior, ProportionalLimitPrior):
        return {"kind": "limit", "ratio": float(prior.ratio), "num_outputs": prior.num_outputs,
                "num_steps": prior.num_steps, "scheme": prior.scheme}
    return {"kind": "nngp", "num_outputs": prior.num_outputs}


_PRIOR_KINDS = {"finite": FiniteWidthPrior, "limit": ProportionalLimitPrior, "nngp": NNGPPrior}


def _prior_from_dict(spec) -> VbarPrior:
    if not isinstance(spec, dict) or spec.get("kind") not in _PRIOR_KINDS:
        raise ValueError(f"prior must be a dict with kind in {sorted(_PRIOR_KINDS)}, got {spec!r}")
    args = {k: v for k, v in spec.items() if k != "kind"}
    if spec["kind"] == "finite" and "depth" in args:
        depth, width = args.pop("depth"), args.pop("width", None)
        if width is None:
            raise ValueError("prior kind 'finite' with a depth needs a width (or give widths)")
        return FiniteWidthPrior.from_depth_width(depth, width, **args)
    try:
        return _PRIOR_KINDS[spec["kind"]](**args)
    except TypeError as err:
        raise ValueError(f"prior {spec!r}: {err}") from None


def _hyper_to_dict(value):
    if value is None or not isinstance(value, dist.Distribution):
        return value
    name = type(value).__name__
    if getattr(dist, name, None) is not type(value):
        raise ValueError(f"{name} is not a numpyro.distributions class; it cannot be written down")
    params = {}
    for k in value.arg_constraints:
        v = np.asarray(getattr(value, k, None))
        if v.shape != () or not np.issubdtype(v.dtype, np.number):
            raise ValueError(f"{name}.{k} is not a scalar; only scalar-parameter priors can be written down")
        params[k] = float(v)
    try:
        type(value)(**params)
    except Exception as err:  # any failure means it cannot be rebuilt from this form
        raise ValueError(f"{name} cannot be rebuilt from its parameters {params}; it cannot be written down") from err
    return {"distribution": name, **params}


def _hyper_from_dict(name, value):
    if not isinstance(value, dict):
        return value
    params = dict(value)
    cls = getattr(dist, str(params.pop("distribution", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, dist.Distribution)):
        raise ValueError(f"{name}: {value!r} does not name a numpyro distribution")
    return cls(**params)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    r"""A deep linear network model: the prior over :math:`\bar V` and the hyperparameters.

    Immutable and validated once, at construction (``ValueError``/``TypeError`` naming the
    argument). Fixed hyperparameters are stored as ``float``.

    Parameters
    ----------
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior
        Law of :math:`\bar V`.
    lambda_star : float or numpyro Distribution, default 1.0
        Prior scale :math:`\lambda_*` (fixed, or a prior over it).
    noise_variance : float, sequence of D floats or numpyro Distribution, default 1.0
        Scalar noise: :math:`\sigma^2` (``0`` = interpolation, needs an invertible ``K``).
        Per-output or full noise: ``D`` positive variances :math:`\sigma_d^2`, or a prior over one
        positive scalar, given independently to every output's variance.
    ratio : numpyro Distribution, optional
        Prior over the depth-to-width ratio ``a`` (proportional limit only); ``None`` keeps
        ``prior.ratio`` fixed.
    noise_model : {"scalar", "diagonal", "full"}, default "scalar"
        Output-noise covariance :math:`\sigma^2 I_D`, :math:`\operatorname{diag}(\sigma_d^2)` or
        :math:`\operatorname{diag}(\sigma)\,\Omega\,\operatorname{diag}(\sigma)`.
    intercept : sequence of D floats or numpyro Distribution, optional
        Per-output intercepts :math:`\mu` (the labels are :math:`1\mu^\top` plus the model above):
        fixed values, or a prior over one real number given independently to every output
        (e.g. ``Normal(0, 1)`` for standardized labels; site ``"intercept"``, ``(D,)``). ``None``
        (default): no intercept, zero-mean labels. Sampled, at :math:`O(R D)` per evaluation
        (:class:`~deeplinear.data.InterceptTerms`).
    noise_correlation : D x D correlation matrix or ``numpyro.distributions.LKJCholesky``, optional
        Full noise only: the noise correlation :math:`\Omega`, fixed (symmetric, positive definite,
        unit diagonal) or with an LKJ prior over its Cholesky factor; default
        ``LKJCholesky(D, concentration=1)`` (uniform over correlation matrices).

    Examples
    --------
    >>> import numpyro.distributions as dist
    >>> from deeplinear import ModelSpec, ProportionalLimitPrior
    >>> spec = ModelSpec(ProportionalLimitPrior(1.0, 2), noise_variance=dist.HalfNormal(1.0))
    >>> spec.to_dict()["noise_variance"]
    {'distribution': 'HalfNormal', 'scale': 1.0}
    >>> ModelSpec.from_json(spec.to_json()).prior == spec.prior
    True
    """

    prior: VbarPrior
    lambda_star: float | dist.Distribution = 1.0
    noise_variance: float | tuple | dist.Distribution = 1.0
    ratio: dist.Distribution | None = None
    noise_model: str = "scalar"
    noise_correlation: tuple | dist.LKJCholesky | None = None
    intercept: tuple | dist.Distribution | None = None

    def __post_init__(self):
        if not isinstance(self.prior, VbarPrior):
            raise TypeError(
                f"prior must be a FiniteWidthPrior, ProportionalLimitPrior or NNGPPrior, got {describe(self.prior)}"
            )
        self._check_intercept()
        check_choice("noise_model", self.noise_model, NOISE_MODELS)
        if self.noise_model != "scalar":
            self._check_matrix_noise()
        elif self.noise_correlation is not None:
            raise ValueError("noise_correlation is only for noise_model='full'")
        for name, allow_zero in (("lambda_star", False), ("noise_variance", True)):
            if name == "noise_variance" and self.noise_model != "scalar":
                continue
            value = getattr(self, name)
            if isinstance(value, dist.Distribution):
                check_hyperprior(name, value)
            else:
                if not isinstance(value, (numbers.Real, np.ndarray, np.generic)) or isinstance(value, bool):
                    raise TypeError(f"{name} must be a number or a numpyro distribution, got {describe(value)}")
                check_positive_scalar(name, value, allow_zero=allow_zero)
                object.__setattr__(self, name, float(value))
        if self.ratio is not None:
            if not isinstance(self.prior, ProportionalLimitPrior):
                raise ValueError(
                    f"ratio can only be given a prior for a ProportionalLimitPrior, not {type(self.prior).__name__}"
                )
            if not isinstance(self.ratio, dist.Distribution):
                raise TypeError(
                    "ratio must be a NumPyro distribution over a > 0 (or None to keep prior.ratio), "
                    f"got {describe(self.ratio)}"
                )
            check_hyperprior("ratio", self.ratio)

    def _check_intercept(self):
        """``None``, ``D`` finite numbers (stored as a tuple) or a prior over one real number."""
        value, D = self.intercept, self.num_outputs
        if value is None:
            return
        if isinstance(value, dist.Distribution):
            if value.batch_shape != () or value.event_shape != ():
                raise ValueError(f"intercept must be a prior over one real number (given to each of the D = {D} "
                                 f"outputs), got batch shape {value.batch_shape}, event shape {value.event_shape}")
            if value.support is not dist.constraints.real:
                raise ValueError(f"intercept must be a prior over the real line (e.g. Normal), got support "
                                 f"{value.support}")
            return
        if isinstance(value, (numbers.Real, np.generic, str)) or (isinstance(value, np.ndarray) and value.ndim == 0):
            raise ValueError(f"intercept must be D = {D} numbers (one per output) or a prior, got {value!r}")
        try:
            arr = np.asarray(value, np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"intercept must be D = {D} numbers or a numpyro distribution, "
                            f"got {describe(value)}") from None
        if arr.shape != (D,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"intercept must be {D} finite numbers (one per output), got shape {arr.shape}")
        object.__setattr__(self, "intercept", tuple(float(v) for v in arr))

    def _check_matrix_noise(self):
        """Per-output variances (a prior over one scalar, or ``D`` positive numbers) and, for full
        noise, the correlation (LKJ prior of dimension ``D``, or a fixed correlation matrix)."""
        D = self.num_outputs
        value = self.noise_variance
        if isinstance(value, dist.Distribution):
            check_hyperprior("noise_variance", value)
        else:
            if isinstance(value, (numbers.Real, np.generic)) or (isinstance(value, np.ndarray) and value.ndim == 0):
                raise ValueError(
                    f"noise_model={self.noise_model!r} needs D = {D} noise variances (one per output) or a prior, "
                    f"got the single number {value!r}; for one variance shared by all outputs use noise_model='scalar'"
                )
            try:
                arr = np.asarray(value, np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"noise_variance must be D = {D} numbers or a numpyro distribution, "
                                f"got {describe(value)}") from None
            if arr.shape != (D,):
                raise ValueError(f"noise_variance must have shape ({D},) (one variance per output), got {arr.shape}")
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise ValueError(f"noise_variance must hold finite positive variances, got {arr.tolist()}")
            object.__setattr__(self, "noise_variance", tuple(float(v) for v in arr))
        corr = self.noise_correlation
        if self.noise_model == "diagonal":
            if corr is not None:
                raise ValueError("noise_correlation is only for noise_model='full', not 'diagonal'")
            return
        if D < 2:
            raise ValueError("noise_model='full' needs D >= 2 outputs; with one output use noise_model='scalar'")
        if corr is None:
            corr = dist.LKJCholesky(D, concentration=DEFAULT_LKJ_CONCENTRATION)
        if isinstance(corr, dist.Distribution):
            if not isinstance(corr, dist.LKJCholesky) or corr.dimension != D or corr.batch_shape != ():
                raise ValueError(
                    f"noise_correlation must be a fixed ({D}, {D}) correlation matrix or a "
                    f"numpyro.distributions.LKJCholesky({D}, concentration), got {describe(corr)}"
                )
        else:
            try:
                arr = np.asarray(corr, np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"noise_correlation must be a ({D}, {D}) matrix or an LKJCholesky prior, "
                                f"got {describe(corr)}") from None
            if arr.shape != (D, D) or not np.all(np.isfinite(arr)):
                raise ValueError(f"noise_correlation must be a finite ({D}, {D}) matrix, got shape {arr.shape}")
            if not np.allclose(arr, arr.T, atol=1e-12) or not np.allclose(np.diag(arr), 1.0, atol=1e-12):
                raise ValueError("noise_correlation must be symmetric with a unit diagonal (a correlation matrix)")
            if np.linalg.eigvalsh(arr).min() <= 0:
                raise ValueError("noise_correlation must be positive definite")
            corr = tuple(tuple(float(x) for x in row) for row in arr)
        object.__setattr__(self, "noise_correlation", corr)

    @property
    def num_outputs(self) -> int:
        """``D``."""
        return self.prior.num_outputs

    @property
    def fixed_noise_covariance(self) -> np.ndarray | None:
        r"""The ``D x D`` noise covariance when nothing about the noise is inferred (float64), else
        ``None``: :math:`\sigma^2 I`, :math:`\operatorname{diag}(\sigma_d^2)` or
        :math:`\operatorname{diag}(\sigma)\Omega\operatorname{diag}(\sigma)`."""
        if isinstance(self.noise_variance, dist.Distribution) or isinstance(self.noise_correlation, dist.Distribution):
            return None
        D = self.num_outputs
        if self.noise_model == "scalar":
            return np.asarray(self.noise_variance, np.float64) * np.eye(D)
        sd = np.sqrt(np.asarray(self.noise_variance))
        corr = np.eye(D) if self.noise_correlation is None else np.asarray(self.noise_correlation)
        return sd[:, None] * corr * sd[None, :]

    @property
    def inferred(self) -> tuple[str, ...]:
        """Names of the hyperparameters given priors (inferred), in the order of :data:`HYPERPARAMETERS`."""
        names = [h for h in HYPERPARAMETERS if isinstance(getattr(self, h), dist.Distribution)]
        if isinstance(self.noise_correlation, dist.Distribution):
            names.append("noise_correlation")
        if isinstance(self.intercept, dist.Distribution):
            names.append("intercept")
        return tuple(names)

    @property
    def has_latent_sites(self) -> bool:
        """False when everything is fixed and the prior is the NNGP (nothing to sample)."""
        return not isinstance(self.prior, NNGPPrior) or bool(self.inferred)

    def check_data(self, data: RegressionData) -> RegressionData:
        """Check that ``data`` goes with this model: ``D`` agrees; ``sigma^2 = 0`` needs rank ``K = P``."""
        check_regression_data(data)
        if self.num_outputs != data.num_outputs:
            raise ValueError(
                f"the prior has num_outputs = {self.num_outputs} but Y has D = {data.num_outputs} "
                "columns (outputs); they must agree"
            )
        if self.noise_model != "scalar":
            fixed = self.fixed_noise_covariance
            if fixed is not None:
                check_noise_covariance(fixed, data)
        elif not isinstance(self.noise_variance, dist.Distribution):
            lam = None if isinstance(self.lambda_star, dist.Distribution) else self.lambda_star
            check_noise_for_data(self.noise_variance, data, lambda_star=lam)
        return data

    def model(self, data: RegressionData, *, observed: bool = True, labels: ArrayLike | None = None) -> None:
        """Run the NumPyro model (see :func:`deep_linear_model`) for this specification."""
        self.check_data(data)
        if labels is not None or not observed:
            data.require_rows("labels= or observed=False")
        expected = (data.num_obs, data.num_outputs)  # data.labels' shape (the rows are kept: checked above)
        if labels is not None and np.shape(labels) != expected:
            raise ValueError(f"labels must have the shape of data.labels {expected}, got {np.shape(labels)}")
        model_body(*self.model_arguments(data), observed=observed, labels=labels)

    def model_arguments(self, data: RegressionData) -> tuple:
        """The pytree ``(prior, lambda_star, noise_variance, ratio, data, intercept)`` that
        :func:`model_body` takes, fixed hyperparameters as arrays of the data's precision:
        everything that may change without changing the compiled sampler (:mod:`deeplinear.sampler`)
        is a leaf."""
        self.check_data(data)
        if self.intercept is not None and data.intercept_terms is None:
            raise ValueError("a model with intercepts needs data.intercept_terms; set the data up with this version")

        def argument(value):
            if value is None:
                return None
            if isinstance(value, dist.Distribution):
                return HyperpriorArguments.of(value, data.dtype)
            return on_device(value, data.dtype)

        noise = argument(self.noise_variance)
        if self.noise_model != "scalar":
            corr = self.noise_correlation
            noise = NoiseArguments(
                self.noise_model, noise,
                None if corr is None or isinstance(corr, dist.Distribution) else jnp.asarray(
                    np.linalg.cholesky(np.asarray(corr)), data.dtype),
                jnp.asarray(corr.concentration, data.dtype) if isinstance(corr, dist.Distribution) else None,
            )
        intercept = self.intercept
        if isinstance(intercept, dist.Distribution):
            intercept = InterceptArguments(HyperpriorArguments.of(intercept, data.dtype))
        elif intercept is not None:
            intercept = jnp.asarray(intercept, data.dtype)
        return (self.prior, argument(self.lambda_star), noise, argument(self.ratio), data, intercept)

    def arviz_dims(self, data: RegressionData, output_names: Sequence[Hashable] | None = None,
                   prefix: str = "") -> dict:
        """``{"dims": ..., "coords": ...}`` naming this model's sites for ArviZ, for converting your
        own NumPyro run: ``arviz_base.from_numpyro(mcmc, **spec.arviz_dims(data))`` gives ``Q`` the dims
        ``(output, output_bis)`` and the prior's latents ``(layer|step, output|offdiag)``, as
        :func:`~deeplinear.fit` does (not ``Q_dim_0``). ``output_names``: ``D`` names for the
        ``output`` coordinate; ``prefix``: as given to ``prior.numpyro_vbar(prefix)``."""
        from deeplinear._validation import check_output_names

        self.check_data(data)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {describe(prefix)}")
        names = check_output_names(output_names, data.num_outputs)
        dims, coords = arviz_dims_and_coords(self.prior, data, names, self.noise_model != "scalar", prefix)
        return {"dims": dims, "coords": coords}

    # -- written form --------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-data form (JSON-ready): the prior as ``{"kind": ...}``, each hyperparameter as a
        number, ``None`` or ``{"distribution": name, **scalar parameters}``."""
        out: dict = {"prior": _prior_to_dict(self.prior)}
        out.update({h: _hyper_to_dict(getattr(self, h)) for h in HYPERPARAMETERS})
        if self.noise_model != "scalar":  # written only when used, so scalar-noise specs read as before
            out["noise_model"] = self.noise_model
            if isinstance(out["noise_variance"], tuple):
                out["noise_variance"] = list(out["noise_variance"])
            corr = self.noise_correlation
            if isinstance(corr, dist.LKJCholesky):
                out["noise_correlation"] = {"distribution": "LKJCholesky", "dimension": corr.dimension,
                                            "concentration": float(np.asarray(corr.concentration))}
            elif corr is not None:
                out["noise_correlation"] = [list(row) for row in corr]
        if self.intercept is not None:  # written only when used
            value = _hyper_to_dict(self.intercept)
            out["intercept"] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, spec: dict) -> ModelSpec:
        """Inverse of :meth:`to_dict`. The prior may also be written
        ``{"kind": "finite", "depth": L, "width": N, "num_outputs": D}``."""
        if not isinstance(spec, dict) or "prior" not in spec:
            raise ValueError(f"a model specification is a dict with a 'prior' entry, got {spec!r}")
        unknown = set(spec) - {"prior", "noise_model", "noise_correlation", "intercept", *HYPERPARAMETERS}
        if unknown:
            raise ValueError(f"unknown entries {sorted(unknown)} in the model specification")
        hypers = {h: _hyper_from_dict(h, spec[h]) for h in HYPERPARAMETERS if h in spec}
        if "noise_model" in spec:
            hypers["noise_model"] = spec["noise_model"]
        if "noise_correlation" in spec:
            hypers["noise_correlation"] = _correlation_from_dict(spec["noise_correlation"])
        if spec.get("intercept") is not None:
            hypers["intercept"] = _hyper_from_dict("intercept", spec["intercept"])
        return cls(_prior_from_dict(spec["prior"]), **hypers)

    def to_json(self) -> str:
        """:meth:`to_dict` as a JSON string."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Inverse of :meth:`to_json`."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a JSON string, got {describe(text)}")
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON model specification: {err}") from None
        return cls.from_dict(spec)

    @classmethod
    def build(cls, prior: VbarPrior | ModelSpec, lambda_star: ScaleLike = 1.0, noise_variance: NoiseVarianceLike = 1.0,
              ratio: dist.Distribution | None = None, noise_model: str = "scalar",
              noise_correlation: NoiseCorrelationLike | None = None,
              intercept: InterceptLike | None = None) -> ModelSpec:
        """A spec from a prior and hyperparameter keywords, or ``prior`` itself when it already is a
        :class:`ModelSpec` (then the keywords must keep their defaults)."""
        if isinstance(prior, ModelSpec):
            given = (lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept)
            if not all(a is b or (isinstance(a, (str, numbers.Real)) and not isinstance(a, bool) and a == b)
                       for a, b in zip(given, (1.0, 1.0, None, "scalar", None, None))):
                raise ValueError("pass the hyperparameters inside the ModelSpec, not as well as keywords")
            return prior
        return cls(prior, lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept)

    def describe(self) -> str:
        """One line: the prior and each hyperparameter (number or distribution with parameters)."""
        parts = [repr(self.prior)]
        for h in HYPERPARAMETERS:
            v = getattr(self, h)
            if isinstance(v, dist.Distribution):
                d = _hyper_to_dict(v) if _writable(v) else {"distribution": type(v).__name__}
                args = ", ".join(f"{k}={x:.3g}" for k, x in d.items() if k != "distribution")
                parts.append(f"{h}={d['distribution']}({args})")
            elif isinstance(v, tuple):
                parts.append(f"{h}=({', '.join(f'{x:g}' for x in v)})")
            elif v is not None:
                parts.append(f"{h}={v:g}")
        if self.noise_model != "scalar":
            parts.append(f"noise_model={self.noise_model!r}")
        corr = self.noise_correlation
        if isinstance(corr, dist.LKJCholesky):
            eta = float(corr.concentration)
            parts.append(f"noise_correlation=LKJCholesky({corr.dimension}, concentration={eta:.3g})")
        elif corr is not None:
            parts.append("noise_correlation=fixed")
        if isinstance(self.intercept, dist.Distribution):
            d = _hyper_to_dict(self.intercept) if _writable(self.intercept) else {"distribution": type(
                self.intercept).__name__}
            args = ", ".join(f"{k}={x:.3g}" for k, x in d.items() if k != "distribution")
            parts.append(f"intercept={d['distribution']}({args})")
        elif self.intercept is not None:
            parts.append(f"intercept=({', '.join(f'{x:g}' for x in self.intercept)})")
        return ", ".join(parts)


def _correlation_from_dict(value):
    """A noise correlation as written by :meth:`ModelSpec.to_dict`: an LKJCholesky prior or a matrix."""
    if isinstance(value, dict):
        params = dict(value)
        if params.pop("distribution", None) != "LKJCholesky" or set(params) != {"dimension", "concentration"}:
            raise ValueError(f"noise_correlation: {value!r} is not an LKJCholesky(dimension, concentration) prior")
        return dist.LKJCholesky(int(params["dimension"]), concentration=float(params["concentration"]))
    return value


def arviz_dims_and_coords(prior: VbarPrior | None, data: RegressionData, output_names: Sequence[Hashable] | None = None,
                          per_output_noise: bool = False, prefix: str = "") -> tuple[dict, dict]:
    r"""ArviZ ``dims`` and ``coords`` for the sites of :func:`deep_linear_model` (and of your own model
    built from ``prior.numpyro_vbar(prefix)``): ``Q``, ``noise_covariance``, ``noise_correlation(_cholesky)``
    ``(output, output_bis)``; ``Y`` ``(obs, output)``; ``intercept`` and per-output ``noise_variance``
    ``(output,)``; the prior's latents ``(layer, output)``/``(layer, offdiag)`` (finite width) or
    ``(step, output)``/``(step, offdiag)`` (limit), named ``prefix + name``. ``prior`` may be ``None``
    (no latent dims)."""
    D = data.num_outputs
    outputs = list(output_names) if output_names is not None else list(range(D))
    coords: dict[str, typing.Any] = {"output": outputs, "output_bis": outputs}
    if data.has_rows:
        coords["obs"] = np.arange(data.num_obs)
    dims = {"Q": ["output", "output_bis"], "Y": ["obs", "output"], "noise_covariance": ["output", "output_bis"],
            "noise_correlation": ["output", "output_bis"], "noise_correlation_cholesky": ["output", "output_bis"]}
    dims["intercept"] = ["output"]
    if per_output_noise:  # per-output variances (a scalar noise variance has no dims)
        dims["noise_variance"] = ["output"]
    if D > 1:
        rows, cols = np.tril_indices(D, k=-1)
        coords["offdiag"] = [f"{outputs[r]},{outputs[c]}" for r, c in zip(rows, cols)]
    if isinstance(prior, FiniteWidthPrior):
        coords["layer"] = np.arange(1, prior.depth + 1)
        dims[prefix + "bartlett_diag"] = ["layer", "output"]
        dims[prefix + "bartlett_offdiag"] = ["layer", "offdiag"]
    elif isinstance(prior, ProportionalLimitPrior):
        coords["step"] = np.arange(1, typing.cast(int, prior.num_steps) + 1)  # resolved at construction
        dims[prefix + "brownian_diag"] = ["step", "output"]
        dims[prefix + "brownian_offdiag"] = ["step", "offdiag"]
    return dims, coords


def _writable(value) -> bool:
    try:
        _hyper_to_dict(value)
    except ValueError:
        return False
    return True


@full_precision
def model_body(prior, lambda_star, noise_variance, ratio, data, intercept=None, *, observed=True, labels=None):
    r"""The model's sites, with no argument checks (so that every argument may be traced):
    ``ratio`` (if a distribution), ``lambda_star``/``noise_variance`` (if distributions), the noise
    model's sites, ``intercept`` (if a prior), the prior's latents, ``Q`` and ``Y``. Call it through
    :meth:`ModelSpec.model`, which validates."""
    dtype = data.dtype
    if ratio is not None:
        prior = prior.replace(ratio=_hyper("ratio", ratio, dtype))
    lam = _hyper("lambda_star", lambda_star, dtype)
    if isinstance(noise_variance, NoiseArguments):
        noise, noise_covariance = None, noise_variance.sites(data.num_outputs, dtype)
    else:
        noise, noise_covariance = _hyper("noise_variance", noise_variance, dtype), None
    if isinstance(intercept, InterceptArguments):
        intercept = numpyro.sample("intercept", intercept.prior.build().expand([data.num_outputs]).to_event(1))
    vbar = prior.numpyro_vbar().astype(dtype)
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    own_labels = labels is None and observed
    likelihood = KroneckerNormal(q, lam, noise, data, root=vbar, labels_are_data=own_labels, relative=own_labels,
                                 noise_covariance=noise_covariance, intercept=intercept)
    if observed and labels is None and data.labels is None:  # streamed set-up: the labels' statistics only
        numpyro.factor("Y", likelihood.data_log_prob())
        return
    obs = (data.labels if labels is None else labels) if observed else None
    numpyro.sample("Y", likelihood, obs=obs)


@pytree_dataclass
class HyperpriorArguments:
    """A hyperprior as a jit argument: its NumPyro class (static) and its parameters (leaves, in a
    dict, which JAX flattens in sorted key order). Passing the distribution object itself would
    flatten its parameters in an order that NumPyro takes from a ``set`` -- different in every
    process (string hashing is randomized) -- so the compiled sampler's persistent-cache key
    would change from process to process. Distributions that cannot be rebuilt from their
    ``arg_constraints`` parameters are kept as they are (``distribution``)."""

    family: type = static_field()
    params: dict | None = None
    distribution: dist.Distribution | None = None

    @classmethod
    def of(cls, value: dist.Distribution, dtype) -> HyperpriorArguments:
        params = {k: getattr(value, k, None) for k in value.arg_constraints}
        try:
            rebuilt = type(value)(**params)
        except Exception:  # any failure: not rebuildable from its parameters
            rebuilt = None
        if rebuilt is None or any(p is None for p in params.values()):
            return cls(type(value), None, value)
        return cls(type(value), {k: on_device(v, dtype) for k, v in params.items()})

    def build(self) -> dist.Distribution:
        """The distribution."""
        return self.distribution if self.params is None else self.family(**self.params)


@pytree_dataclass
class InterceptArguments:
    """A prior over per-output intercepts as a jit argument (each output gets ``prior``)."""

    prior: HyperpriorArguments


@pytree_dataclass
class NoiseArguments:
    r"""Per-output or full output noise as a jit argument: ``kind`` (static), the variances
    (``(D,)`` array, or a :class:`HyperpriorArguments` given to each output independently), and for
    full noise either the fixed correlation's Cholesky factor ``(D, D)`` or the concentration of
    its LKJ prior."""

    kind: str = static_field()
    variance: object = None
    correlation_cholesky: object = None
    concentration: object = None

    def sites(self, D: int, dtype):
        r"""Create the noise sites and return :math:`\Sigma_\varepsilon` ``(D, D)`` (recorded as the
        deterministic ``noise_covariance``)."""
        if isinstance(self.variance, HyperpriorArguments):
            variance = numpyro.sample("noise_variance", self.variance.build().expand([D]).to_event(1))
        else:
            variance = jnp.asarray(self.variance, dtype)
        sd = jnp.sqrt(variance.astype(dtype))
        if self.kind == "diagonal":
            return numpyro.deterministic("noise_covariance", jnp.diag(variance.astype(dtype)))
        if self.concentration is not None:
            chol = numpyro.sample("noise_correlation_cholesky", dist.LKJCholesky(D, self.concentration)).astype(dtype)
            numpyro.deterministic("noise_correlation", chol @ chol.T)
        else:
            chol = jnp.asarray(self.correlation_cholesky, dtype)
        factor = sd[:, None] * chol
        return numpyro.deterministic("noise_covariance", factor @ factor.T)


def _hyper(name, value, dtype):
    if isinstance(value, HyperpriorArguments):
        value = value.build()
    if isinstance(value, dist.Distribution):
        return numpyro.sample(name, value)
    return jnp.asarray(value, dtype)


@full_precision
def deep_linear_model(
    data: RegressionData,
    prior: VbarPrior | ModelSpec,
    *,
    lambda_star: ScaleLike = 1.0,
    noise_variance: NoiseVarianceLike = 1.0,
    ratio: dist.Distribution | None = None,
    observed: bool = True,
    labels: ArrayLike | None = None,
    noise_model: str = "scalar",
    noise_correlation: NoiseCorrelationLike | None = None,
    intercept: InterceptLike | None = None,
) -> None:
    r"""NumPyro model: Bayesian deep linear network regression with ``f`` marginalized.

    Parameters
    ----------
    data : RegressionData
        Kernel eigenbasis and labels ``Y`` (``(P, D)``).
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior | ModelSpec
        Law of :math:`\bar V`, or a whole :class:`ModelSpec` (then leave the hyperparameters out).
    lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept
        As in :class:`ModelSpec`.
    observed : bool, default True
        Condition on the labels; ``False`` samples ``Y`` (prior/posterior predictive).
    labels : array ``(P, D)``, optional
        Condition on these labels instead of ``data.labels`` (same inputs). May be traced,
        e.g. under ``jax.vmap`` over simulated data sets (as
        :func:`~deeplinear.sbc.simulation_based_calibration` does); costs :math:`O(PRD)`
        more per evaluation than ``data.labels``, whose rotation is precomputed.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from numpyro.infer import Predictive
    >>> from deeplinear import RegressionData, ProportionalLimitPrior, deep_linear_model
    >>> data = RegressionData.linear(np.eye(6, 3), np.zeros((6, 2)))
    >>> prior = ProportionalLimitPrior(0.5, num_outputs=2, num_steps=8)
    >>> draws = Predictive(deep_linear_model, num_samples=4)(
    ...     jax.random.key(0), data, prior, observed=False)
    >>> draws["Q"].shape, draws["Y"].shape
    ((4, 2, 2), (4, 6, 2))
    """
    ModelSpec.build(prior, lambda_star, noise_variance, ratio, noise_model, noise_correlation, intercept).model(
        data, observed=observed, labels=labels)
