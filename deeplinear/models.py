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

Sites: the prior's latents (``bartlett_*`` or ``brownian_*``), ``"ratio"``, ``"lambda_star"``,
``"noise_variance"`` when given priors, the deterministic ``"Q"``, and the observed ``"Y"``
(``(P, D)``).

Building blocks for your own models: :func:`numpyro_q` (creates the prior's latent sites and
returns ``Q``; for direct draws use ``prior.sample_q(key, shape)``) and
:class:`~deeplinear.likelihood.KroneckerNormal` (the likelihood).
"""

from __future__ import annotations

import dataclasses
import json
import numbers

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from deeplinear._pytree import pytree_dataclass, static_field
from deeplinear._validation import check_hyperprior, check_noise_for_data, check_positive_scalar, describe
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.likelihood import KroneckerNormal
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, VbarPrior

__all__ = ["ModelSpec", "deep_linear_model", "numpyro_q"]

HYPERPARAMETERS = ("lambda_star", "noise_variance", "ratio")


def numpyro_q(prior: VbarPrior, *, prefix: str = "", name: str | None = "Q", dtype=None):
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
                "num_steps": prior.num_steps}
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
    noise_variance : float or numpyro Distribution, default 1.0
        :math:`\sigma^2` (``0`` = interpolation, needs an invertible ``K``).
    ratio : numpyro Distribution, optional
        Prior over the depth-to-width ratio ``a`` (proportional limit only); ``None`` keeps
        ``prior.ratio`` fixed.

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
    noise_variance: float | dist.Distribution = 1.0
    ratio: dist.Distribution | None = None

    def __post_init__(self):
        if not isinstance(self.prior, VbarPrior):
            raise TypeError(
                f"prior must be a FiniteWidthPrior, ProportionalLimitPrior or NNGPPrior, got {describe(self.prior)}"
            )
        for name, allow_zero in (("lambda_star", False), ("noise_variance", True)):
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

    @property
    def num_outputs(self) -> int:
        """``D``."""
        return self.prior.num_outputs

    @property
    def inferred(self) -> tuple[str, ...]:
        """Names of the hyperparameters given priors (inferred), in the order of :data:`HYPERPARAMETERS`."""
        return tuple(h for h in HYPERPARAMETERS if isinstance(getattr(self, h), dist.Distribution))

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
        if not isinstance(self.noise_variance, dist.Distribution):
            lam = None if isinstance(self.lambda_star, dist.Distribution) else self.lambda_star
            check_noise_for_data(self.noise_variance, data, lambda_star=lam)
        return data

    def model(self, data: RegressionData, *, observed: bool = True, labels=None):
        """Run the NumPyro model (see :func:`deep_linear_model`) for this specification."""
        self.check_data(data)
        if labels is not None or not observed:
            data.require_rows("labels= or observed=False")
        if labels is not None and jnp.shape(labels) != data.labels.shape:
            raise ValueError(f"labels must have the shape of data.labels {data.labels.shape}, got {jnp.shape(labels)}")
        model_body(self.prior, self.lambda_star, self.noise_variance, self.ratio, data, observed=observed,
                   labels=labels)

    def model_arguments(self, data: RegressionData) -> tuple:
        """The pytree ``(prior, lambda_star, noise_variance, ratio, data)`` that :func:`model_body`
        takes, fixed hyperparameters as arrays of the data's precision: everything that may change
        without changing the compiled sampler (:mod:`deeplinear.sampler`) is a leaf."""
        self.check_data(data)

        def argument(value):
            if value is None:
                return None
            if isinstance(value, dist.Distribution):
                return HyperpriorArguments.of(value, data.dtype)
            return jnp.asarray(value, data.dtype)

        return (self.prior, argument(self.lambda_star), argument(self.noise_variance), argument(self.ratio), data)

    # -- written form --------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain-data form (JSON-ready): the prior as ``{"kind": ...}``, each hyperparameter as a
        number, ``None`` or ``{"distribution": name, **scalar parameters}``."""
        out = {"prior": _prior_to_dict(self.prior)}
        out.update({h: _hyper_to_dict(getattr(self, h)) for h in HYPERPARAMETERS})
        return out

    @classmethod
    def from_dict(cls, spec: dict) -> ModelSpec:
        """Inverse of :meth:`to_dict`. The prior may also be written
        ``{"kind": "finite", "depth": L, "width": N, "num_outputs": D}``."""
        if not isinstance(spec, dict) or "prior" not in spec:
            raise ValueError(f"a model specification is a dict with a 'prior' entry, got {spec!r}")
        unknown = set(spec) - {"prior", *HYPERPARAMETERS}
        if unknown:
            raise ValueError(f"unknown entries {sorted(unknown)} in the model specification")
        hypers = {h: _hyper_from_dict(h, spec[h]) for h in HYPERPARAMETERS if h in spec}
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
    def build(cls, prior, lambda_star=1.0, noise_variance=1.0, ratio=None) -> ModelSpec:
        """A spec from a prior and hyperparameter keywords, or ``prior`` itself when it already is a
        :class:`ModelSpec` (then the keywords must keep their defaults)."""
        if isinstance(prior, ModelSpec):
            if (lambda_star, noise_variance, ratio) != (1.0, 1.0, None):
                raise ValueError("pass the hyperparameters inside the ModelSpec, not as well as keywords")
            return prior
        return cls(prior, lambda_star, noise_variance, ratio)

    def describe(self) -> str:
        """One line: the prior and each hyperparameter (number or distribution with parameters)."""
        parts = [repr(self.prior)]
        for h in HYPERPARAMETERS:
            v = getattr(self, h)
            if isinstance(v, dist.Distribution):
                d = _hyper_to_dict(v) if _writable(v) else {"distribution": type(v).__name__}
                args = ", ".join(f"{k}={x:.3g}" for k, x in d.items() if k != "distribution")
                parts.append(f"{h}={d['distribution']}({args})")
            elif v is not None:
                parts.append(f"{h}={v:g}")
        return ", ".join(parts)


def _writable(value) -> bool:
    try:
        _hyper_to_dict(value)
    except ValueError:
        return False
    return True


def model_body(prior, lambda_star, noise_variance, ratio, data, *, observed=True, labels=None):
    r"""The model's sites, with no argument checks (so that every argument may be traced):
    ``ratio`` (if a distribution), ``lambda_star``/``noise_variance`` (if distributions), the
    prior's latents, ``Q`` and ``Y``. Call it through :meth:`ModelSpec.model`, which validates."""
    dtype = data.dtype
    if ratio is not None:
        prior = prior.replace(ratio=_hyper("ratio", ratio, dtype))
    lam = _hyper("lambda_star", lambda_star, dtype)
    noise = _hyper("noise_variance", noise_variance, dtype)
    vbar = prior.numpyro_vbar().astype(dtype)
    q = numpyro.deterministic("Q", vbar @ vbar.T)
    own_labels = labels is None and observed
    likelihood = KroneckerNormal(q, lam, noise, data, root=vbar, labels_are_data=own_labels, relative=own_labels)
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
        return cls(type(value), {k: jnp.asarray(v, dtype) for k, v in params.items()})

    def build(self) -> dist.Distribution:
        """The distribution."""
        return self.distribution if self.params is None else self.family(**self.params)


def _hyper(name, value, dtype):
    if isinstance(value, HyperpriorArguments):
        value = value.build()
    if isinstance(value, dist.Distribution):
        return numpyro.sample(name, value)
    return jnp.asarray(value, dtype)


def deep_linear_model(
    data: RegressionData,
    prior: VbarPrior | ModelSpec,
    *,
    lambda_star=1.0,
    noise_variance=1.0,
    ratio: dist.Distribution | None = None,
    observed: bool = True,
    labels=None,
):
    r"""NumPyro model: Bayesian deep linear network regression with ``f`` marginalized.

    Parameters
    ----------
    data : RegressionData
        Kernel eigenbasis and labels ``Y`` (``(P, D)``).
    prior : FiniteWidthPrior | ProportionalLimitPrior | NNGPPrior | ModelSpec
        Law of :math:`\bar V`, or a whole :class:`ModelSpec` (then leave the hyperparameters out).
    lambda_star, noise_variance, ratio
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
    ModelSpec.build(prior, lambda_star, noise_variance, ratio).model(data, observed=observed, labels=labels)
