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

from deeplinear._compat import repair_lazy_numpyro

repair_lazy_numpyro()  # arviz_base lazy-loads numpyro; see deeplinear/_compat.py

from deeplinear import moments  # noqa: E402
from deeplinear._precision import PrecisionWarning  # noqa: E402
from deeplinear.cache import enable_compilation_cache  # noqa: E402
from deeplinear.comparison import compare_models  # noqa: E402
from deeplinear.data import PredictionKernel, RegressionData  # noqa: E402
from deeplinear.exact import exact_posterior_d1  # noqa: E402
from deeplinear.inference import ConvergenceWarning, PosteriorFit, fit  # noqa: E402
from deeplinear.io import load_fit, save_fit  # noqa: E402
from deeplinear.likelihood import KroneckerNormal  # noqa: E402
from deeplinear.loo import loo  # noqa: E402
from deeplinear.models import ModelSpec, deep_linear_model, numpyro_q  # noqa: E402
from deeplinear.network import sample_network_outputs  # noqa: E402
from deeplinear.predictive import PredictiveMixture, correlation_matrix  # noqa: E402
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior  # noqa: E402
from deeplinear.sbc import simulation_based_calibration  # noqa: E402
from deeplinear.streaming import ArrayChunks  # noqa: E402

__version__ = "0.2.0"

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
