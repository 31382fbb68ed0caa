"""deeplinear: Bayesian inference in deep linear networks at any depth-to-width ratio.

The prior over a deep linear network's outputs is a Gaussian mixture over a random
``D x D`` matrix ``Q = Vbar Vbar^T`` (see ``docs/theory.md``). This package samples its
laws exactly at finite width (:class:`FiniteWidthPrior`), in the proportional limit
``L/N -> a`` (:class:`ProportionalLimitPrior`) and at infinite width
(:class:`NNGPPrior`), and checks them against brute-force networks
(:func:`sample_network_outputs`) and closed forms (:mod:`deeplinear.moments`).

Inference (theory.md §4): :class:`RegressionData` prepares the kernel eigenbasis once,
:func:`deep_linear_model` / :class:`KroneckerNormal` / :func:`sample_q` are the NumPyro
model and its building blocks, :func:`fit` runs NUTS and returns an ArviZ DataTree,
:meth:`PosteriorFit.predict` gives the predictive mixture, :func:`compare_models` sets a
model against the NNGP, :func:`exact_posterior_d1` gives exact ``D = 1`` references, and
:func:`simulation_based_calibration` checks the sampler on data simulated from the prior.

Importing deeplinear changes no global JAX state; for float64 run
``jax.config.update("jax_enable_x64", True)`` yourself (or use ``jax.enable_x64()``).
"""

from deeplinear._compat import repair_lazy_numpyro

repair_lazy_numpyro()  # arviz_base lazy-loads numpyro; see deeplinear/_compat.py

from deeplinear import moments  # noqa: E402
from deeplinear.comparison import ModelComparison, compare_models, loo, plot_predictive_correlations
from deeplinear.data import KernelEigenbasis, RegressionData
from deeplinear.exact import ExactPosteriorD1, exact_posterior_d1
from deeplinear.inference import ConvergenceWarning, Diagnostics, PosteriorFit, fit
from deeplinear.likelihood import KroneckerNormal, PrecisionWarning, loo_log_likelihood, loo_log_likelihood_draws
from deeplinear.models import deep_linear_model, sample_q
from deeplinear.network import network_forward, sample_network_outputs
from deeplinear.persistence import load_fit, save_fit
from deeplinear.predictive import PredictiveMixture, conditional_predictive, correlation_matrix
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, VbarPrior
from deeplinear.sbc import SBCResult, simulation_based_calibration

__version__ = "0.1.0"

__all__ = [
    "ConvergenceWarning",
    "Diagnostics",
    "ExactPosteriorD1",
    "KernelEigenbasis",
    "KroneckerNormal",
    "ModelComparison",
    "PosteriorFit",
    "PrecisionWarning",
    "PredictiveMixture",
    "RegressionData",
    "SBCResult",
    "compare_models",
    "conditional_predictive",
    "correlation_matrix",
    "deep_linear_model",
    "exact_posterior_d1",
    "fit",
    "loo",
    "load_fit",
    "loo_log_likelihood",
    "loo_log_likelihood_draws",
    "save_fit",
    "plot_predictive_correlations",
    "sample_q",
    "simulation_based_calibration",
    "FiniteWidthPrior",
    "NNGPPrior",
    "ProportionalLimitPrior",
    "VbarPrior",
    "moments",
    "network_forward",
    "sample_network_outputs",
]
