"""deeplinear: Bayesian inference in deep linear networks at any depth-to-width ratio.

The prior over a deep linear network's outputs is a Gaussian mixture over a random
``D x D`` matrix ``Q = Vbar Vbar^T`` (see ``docs/theory.md``). This package samples its
laws exactly at finite width (:class:`FiniteWidthPrior`), in the proportional limit
``L/N -> a`` (:class:`ProportionalLimitPrior`) and at infinite width (:class:`NNGPPrior`),
and checks them against brute-force networks (:func:`sample_network_outputs`) and closed
forms (:mod:`deeplinear.moments`).

Inference (theory.md §4): :class:`RegressionData` prepares the kernel eigenbasis once,
:class:`ModelSpec` holds a prior with its hyperparameters, :func:`deep_linear_model` /
:class:`KroneckerNormal` / :func:`numpyro_q` are the NumPyro model and its building blocks,
:func:`fit` runs NUTS and returns a :class:`PosteriorFit` (an ArviZ DataTree and more),
:meth:`PosteriorFit.predict` gives the :class:`PredictiveMixture`, :func:`compare_models` sets a
model against the NNGP, :func:`exact_posterior_d1` gives exact ``D = 1`` references, and
:func:`simulation_based_calibration` checks the sampler on data simulated from the prior.

Rows are observations: inputs ``X`` are ``(P, N0)``, labels ``Y`` are ``(P, D)``.
Importing deeplinear changes no global JAX state; for float64 run
``jax.config.update("jax_enable_x64", True)`` yourself (or use ``jax.enable_x64()``), and for
JAX's persistent compilation cache call :func:`enable_compilation_cache`.
The command line and the demonstrations live in :mod:`deeplinear.app`, which the library
never imports.
"""

import sys
import types
from typing import TYPE_CHECKING

# Where each public name lives. Importing deeplinear imports none of them: a name's module (and
# what it needs: JAX, NumPyro, xarray, SciPy, ...) loads on first use (PEP 562), so that
# ``import deeplinear`` is quick and a session that never plots, compares or reads files never
# loads matplotlib, pandas or SciPy's optimizers.
_LAZY = {
    "ArrayChunks": "deeplinear.streaming",
    "ConvergenceWarning": "deeplinear.inference",
    "FiniteWidthPrior": "deeplinear.priors",
    "KroneckerNormal": "deeplinear.likelihood",
    "ModelSpec": "deeplinear.models",
    "NNGPPrior": "deeplinear.priors",
    "PosteriorFit": "deeplinear.inference",
    "PrecisionWarning": "deeplinear._precision",
    "PredictionKernel": "deeplinear.data",
    "PredictiveMixture": "deeplinear.predictive",
    "ProportionalLimitPrior": "deeplinear.priors",
    "RegressionData": "deeplinear.data",
    "compare_models": "deeplinear.comparison",
    "correlation_matrix": "deeplinear.predictive",
    "deep_linear_model": "deeplinear.models",
    "enable_compilation_cache": "deeplinear.cache",
    "exact_posterior_d1": "deeplinear.exact",
    "fit": "deeplinear.inference",
    "load_fit": "deeplinear.io",
    "loo": "deeplinear.loo",
    "moments": None,  # the submodule itself
    "numpyro_q": "deeplinear.models",
    "sample_network_outputs": "deeplinear.network",
    "save_fit": "deeplinear.io",
    "simulation_based_calibration": "deeplinear.sbc",
}


def _installed_version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written), read on
    first use of ``__version__``; ``"0+unknown"`` for a source tree on ``sys.path`` that is not installed."""
    from importlib import metadata

    try:
        return metadata.version("deeplinear")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def __getattr__(name):
    import importlib

    if name == "__version__":
        globals()[name] = _installed_version()
        return globals()[name]
    if name not in _LAZY:
        raise AttributeError(f"module 'deeplinear' has no attribute {name!r}")
    from deeplinear._compat import repair_lazy_numpyro

    repair_lazy_numpyro()  # arviz_base lazy-loads numpyro; see deeplinear/_compat.py
    module = _LAZY[name]
    value = importlib.import_module(f"deeplinear.{name}") if module is None else getattr(
        importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"__version__"})


class _Package(types.ModuleType):
    """The package's module type: ``deeplinear.loo`` is the function :func:`~deeplinear.loo.loo`,
    but importing the submodule ``deeplinear.loo`` makes Python set the package's attribute to
    the submodule; that one assignment is ignored (the name is bound, lazily, to the function)."""

    def __setattr__(self, name, value):
        if name == "loo" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from deeplinear import moments
    from deeplinear._precision import PrecisionWarning
    from deeplinear.cache import enable_compilation_cache
    from deeplinear.comparison import compare_models
    from deeplinear.data import PredictionKernel, RegressionData
    from deeplinear.exact import exact_posterior_d1
    from deeplinear.inference import ConvergenceWarning, PosteriorFit, fit
    from deeplinear.io import load_fit, save_fit
    from deeplinear.likelihood import KroneckerNormal
    from deeplinear.loo import loo
    from deeplinear.models import ModelSpec, deep_linear_model, numpyro_q
    from deeplinear.network import sample_network_outputs
    from deeplinear.predictive import PredictiveMixture, correlation_matrix
    from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior
    from deeplinear.sbc import simulation_based_calibration
    from deeplinear.streaming import ArrayChunks


__all__ = [
    "ArrayChunks",
    "ConvergenceWarning",
    "FiniteWidthPrior",
    "KroneckerNormal",
    "ModelSpec",
    "NNGPPrior",
    "PosteriorFit",
    "PrecisionWarning",
    "PredictionKernel",
    "PredictiveMixture",
    "ProportionalLimitPrior",
    "RegressionData",
    "compare_models",
    "correlation_matrix",
    "deep_linear_model",
    "enable_compilation_cache",
    "exact_posterior_d1",
    "fit",
    "load_fit",
    "loo",
    "moments",
    "numpyro_q",
    "sample_network_outputs",
    "save_fit",
    "simulation_based_calibration",
]
