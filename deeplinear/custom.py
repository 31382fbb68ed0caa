r"""Your own NumPyro model in :func:`~deeplinear.fit` (``fit(data, model=my_model)``).

A model built from the building blocks -- :func:`~deeplinear.numpyro_q` or
``prior.numpyro_vbar()``, your own hyperpriors, and :class:`~deeplinear.KroneckerNormal` on the
fit's ``data`` -- has the same posterior predictive as the built-in one: given each draw's
:math:`Q`, :math:`\lambda_*`, output noise and intercept, the labels are
:math:`N(1\mu^\top, \lambda_* Q\otimes K + \Sigma_\varepsilon\otimes I)`. So a fit of it can predict, give
LOO terms, be compared and be saved, provided its posterior holds those quantities under the names
the package reads (the *site contract*):

* ``"Q"`` ``(D, D)`` -- e.g. ``numpyro.deterministic("Q", vbar @ vbar.T)``;
* ``"lambda_star"`` (a scalar);
* the noise: ``"noise_variance"`` (a scalar, noise :math:`\sigma^2 I`) or ``"noise_covariance"``
  ``(D, D)`` (any other noise);
* optionally ``"intercept"`` ``(D,)``;
* the labels: the observed site ``"Y"``, a :class:`~deeplinear.KroneckerNormal` with
  ``obs=data.labels`` when the model is called as ``model(data)``. Give the model a switch
  (``observed=True``; ``obs=data.labels if observed else None``, ``labels_are_data=observed``) so that
  ``numpyro.infer.Predictive`` of ``partial(model, observed=False)`` draws new labels: of an observed
  site it returns the data.

Fixed values are recorded with ``numpyro.deterministic(name, value)``. :func:`inspect_model` checks
the contract on one trace of the model before anything is compiled, including that the recorded
values are the ones the likelihood uses. The model is called as ``model(data)``; bind other
arguments with ``functools.partial``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from deeplinear._types import KeyLike
from deeplinear._validation import describe
from deeplinear.data import RegressionData, check_regression_data
from deeplinear.likelihood import KroneckerNormal

if TYPE_CHECKING:
    from deeplinear.sampler import SamplerRun

__all__ = ["CustomModel", "inspect_model", "run_custom_nuts"]

EXTRA_FIELDS = ("diverging", "energy", "potential_energy", "accept_prob", "num_steps", "adapt_state.step_size")


@dataclasses.dataclass(frozen=True)
class CustomModel:
    r"""What a :class:`~deeplinear.PosteriorFit` knows of a user's model (in place of a
    :class:`~deeplinear.ModelSpec`): its name, ``D``, whether its noise is a scalar variance
    (``noise_model="scalar"``) or a matrix (``"full"``, read from ``noise_covariance``), whether it
    has intercepts, and the model function itself (``None`` after :func:`~deeplinear.load_fit`: code
    is not written to files; what needs it says so)."""

    name: str
    num_outputs: int
    noise_model: str
    has_intercept: bool
    model: Callable | None = dataclasses.field(default=None, compare=False, repr=False)

    prior = None  # no deeplinear prior object: the model defines its own
    fixed_noise_covariance = None
    has_latent_sites = True

    @property
    def intercept(self) -> str | None:
        """``"sampled"`` when the model has an ``intercept`` site, else ``None`` (as
        :attr:`ModelSpec.intercept <deeplinear.ModelSpec>` is ``None`` without intercepts)."""
        return "sampled" if self.has_intercept else None

    def check_data(self, data: RegressionData) -> RegressionData:
        """``data`` is a :class:`~deeplinear.RegressionData` with this model's ``D``."""
        check_regression_data(data)
        if data.num_outputs != self.num_outputs:
            raise ValueError(f"the model {self.name!r} has D = {self.num_outputs} outputs but the data have "
                             f"D = {data.num_outputs}")
        return data

    def require_model(self, what: str) -> Callable:
        """The model function, or a ``ValueError`` naming ``what`` when it was not kept (a loaded fit)."""
        if self.model is None:
            raise ValueError(f"{what} needs the model function of {self.name!r}, which a fit read from a file "
                             "does not have (code is not saved)")
        return self.model

    def model_arguments(self, data: RegressionData) -> NoReturn:
        """Refused: a user's model is not one of the built-in model's configurations."""
        raise ValueError(f"{self.name!r} is your own model: the built-in model's arguments do not describe it")

    def to_dict(self) -> dict:
        """Plain-data form, written by :func:`~deeplinear.save_fit` (the function itself is not)."""
        return {"custom_model": {"name": self.name, "num_outputs": self.num_outputs,
                                 "noise_model": self.noise_model, "has_intercept": self.has_intercept}}

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, spec: dict) -> CustomModel:
        """Inverse of :meth:`to_dict` (without the function)."""
        body = spec["custom_model"]
        if not isinstance(body, dict) or set(body) != {"name", "num_outputs", "noise_model", "has_intercept"}:
            raise ValueError(f"not a custom-model description: {spec!r}")
        if body["noise_model"] not in ("scalar", "full") or not isinstance(body["has_intercept"], bool):
            raise ValueError(f"not a custom-model description: {spec!r}")
        D = body["num_outputs"]
        if not isinstance(D, int) or isinstance(D, bool) or D < 1:
            raise ValueError(f"not a custom-model description: {spec!r}")
        return cls(str(body["name"]), D, body["noise_model"], body["has_intercept"])

    def describe(self) -> str:
        """One line."""
        return f"your own model {self.name!r} (D = {self.num_outputs}, {self.noise_model} noise)"


def _site_value(trace, name):
    site = trace.get(name)
    if site is None or site["type"] not in ("sample", "deterministic"):
        return None
    return np.asarray(site["value"], np.float64)


def _require(trace, name, shape, hint):
    value = _site_value(trace, name)
    if value is None:
        raise ValueError(f"fit(model=...): the model has no site {name!r}; {hint}")
    if value.shape != shape:
        raise ValueError(f"fit(model=...): the site {name!r} must have shape {shape}, got {value.shape}")
    return value


def _agrees(name, recorded, used):
    used = np.asarray(used, np.float64)
    if not np.allclose(recorded, np.broadcast_to(used, recorded.shape), rtol=1e-5, atol=1e-8):
        raise ValueError(f"fit(model=...): the site {name!r} records a value other than the one the likelihood "
                         "'Y' uses; record exactly what you pass to KroneckerNormal")


ROOT_TOLERANCE = 1e-4  # max|root root^T - Q| / max|Q| accepted (float32 products of D x D factors)


def _check_sampleable(trace) -> None:
    """NUTS's needs, on the first trace: every latent site continuous (a discrete one made NumPyro
    ask for ``funsor``), and a finite log density at the traced values (a NaN one ended in
    NumPyro's "Cannot find valid initial parameters"), naming the sites that break them."""
    discrete, bad = [], []
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        fn = site["fn"]
        if not site["is_observed"] and getattr(fn.support, "is_discrete", False):
            discrete.append(f"{name!r} ({type(fn).__name__})")
            continue
        try:
            log_prob = float(np.sum(np.asarray(fn.log_prob(site["value"]))))
        except Exception:  # noqa: BLE001 - what NUTS would meet as well; reported below by name
            log_prob = float("nan")
        if not np.isfinite(log_prob):
            bad.append(f"{name!r} ({log_prob})")
    if discrete:
        raise ValueError("fit(model=...): NUTS samples continuous sites only; the model has the discrete latent "
                         f"site(s) {', '.join(discrete)}: marginalize them out, or fix their values")
    if bad:
        raise ValueError("fit(model=...): the log density is not finite on a first trace (seed 0) at the site(s) "
                         f"{', '.join(bad)}; NUTS needs a finite log density and gradient where it starts")


def _root_factors_q(root, q) -> None:
    """A ``KroneckerNormal(root=...)`` whose ``root`` is not a factor of its ``Q`` would have NUTS
    sample one model while prediction, LOO and saving (which read ``Q``) use another."""
    scale = max(float(np.abs(q).max()), np.finfo(np.float64).tiny)
    error = float(np.abs(root @ np.swapaxes(root, -1, -2) - q).max()) / scale
    if not error <= ROOT_TOLERANCE:
        raise ValueError(f"fit(model=...): the likelihood 'Y' has a root that is not a factor of its Q: "
                         f"max|root root^T - Q| / max|Q| = {error:.2e} (at most {ROOT_TOLERANCE:g}); the fit reads "
                         "'Q', so give KroneckerNormal the q and root of one matrix (root @ root.T == q)")


def inspect_model(model: Callable, data: RegressionData) -> CustomModel:
    """Check the site contract (module docstring) on one trace of ``model(data)`` (seed 0) and
    describe the model; a ``TypeError``/``ValueError`` says what is missing, before any compilation."""
    from numpyro import handlers

    if not callable(model):
        raise TypeError(f"model must be a NumPyro model function model(data), got {describe(model)}")
    check_regression_data(data)
    data.require_rows("fit(model=...)")
    name = getattr(model, "__qualname__", None) or getattr(getattr(model, "func", None), "__qualname__", None)
    name = name or type(model).__name__
    try:
        trace = handlers.trace(handlers.seed(model, 0)).get_trace(data)
    except Exception as err:  # the user's code: report any failure with its type
        raise ValueError(f"fit(model=...): model(data) failed on a first trace: {type(err).__name__}: {err}") from err
    _check_sampleable(trace)
    D = data.num_outputs
    site = trace.get("Y")
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        raise ValueError("fit(model=...): the model must observe the labels at a site 'Y' "
                         "(numpyro.sample('Y', KroneckerNormal(...), obs=data.labels))")
    fn = site["fn"]
    while not isinstance(fn, KroneckerNormal) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    if not isinstance(fn, KroneckerNormal):
        raise ValueError(f"fit(model=...): the site 'Y' must be a deeplinear.KroneckerNormal, got "
                         f"{type(site['fn']).__name__}")
    if np.shape(site["value"]) != (data.num_obs, D) or not np.array_equal(np.asarray(site["value"]),
                                                                         np.asarray(data.labels)):
        raise ValueError("fit(model=...): the site 'Y' must observe data.labels (the fit's labels)")
    if fn.data.num_obs != data.num_obs or fn.data.basis.rank != data.basis.rank or not np.allclose(
            np.asarray(fn.data.basis.eigenvalues), np.asarray(data.basis.eigenvalues)):
        raise ValueError("fit(model=...): the likelihood 'Y' must be on the fit's data (the same kernel)")
    hint_fixed = "record a fixed value with numpyro.deterministic({!r}, value)"
    q = _require(trace, "Q", (D, D), "record it: numpyro.deterministic('Q', vbar @ vbar.T)")
    _agrees("Q", q, fn.q)
    if fn.root is not None:
        _root_factors_q(np.asarray(fn.root, np.float64), np.asarray(fn.q, np.float64))
    lam = _require(trace, "lambda_star", (), hint_fixed.format("lambda_star"))
    _agrees("lambda_star", lam, fn.lambda_star)
    if fn.noise_covariance is not None:
        noise = _require(trace, "noise_covariance", (D, D), hint_fixed.format("noise_covariance"))
        _agrees("noise_covariance", noise, fn.noise_covariance)
        noise_model = "full"
    else:
        noise = _require(trace, "noise_variance", (), hint_fixed.format("noise_variance"))
        _agrees("noise_variance", noise, fn.noise_variance)
        noise_model = "scalar"
    has_intercept = fn.intercept is not None
    if has_intercept:
        _agrees("intercept", _require(trace, "intercept", (D,), hint_fixed.format("intercept")), fn.intercept)
    elif "intercept" in trace:
        raise ValueError("fit(model=...): the model has an 'intercept' site but its likelihood has no intercept")
    return CustomModel(str(name), D, noise_model, has_intercept, model)


def run_custom_nuts(custom: CustomModel, data: RegressionData, key: KeyLike, *, num_chains: int, num_warmup: int,
                    num_samples: int, target_accept_prob: float, max_tree_depth: int, chain_method: str,
                    progress_bar: bool) -> SamplerRun:
    """NumPyro's ``MCMC(NUTS(model))`` on ``model(data)``: draws (every sample and deterministic
    site, ``(chains, draws, ...)``) and the sample statistics under ArviZ's names, as a
    :class:`~deeplinear.sampler.SamplerRun`. (Compiled by NumPyro for each call: the built-in model's
    compile-once driver cannot know a user's model.)"""
    import jax
    from numpyro.infer import MCMC, NUTS

    from deeplinear.sampler import SamplerRun

    if chain_method == "auto":
        chain_method = "parallel" if len(jax.local_devices()) >= num_chains > 1 else "vectorized"
    mcmc = MCMC(NUTS(custom.model, target_accept_prob=target_accept_prob, max_tree_depth=max_tree_depth),
                num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                progress_bar=progress_bar)
    mcmc.run(key, data, extra_fields=EXTRA_FIELDS)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    stats = {
        "diverging": extra["diverging"], "energy": extra["energy"], "lp": -extra["potential_energy"],
        "acceptance_rate": extra["accept_prob"], "n_steps": extra["num_steps"].astype(np.int32),
        "step_size": extra["adapt_state.step_size"],
    }
    return SamplerRun(samples, stats)
