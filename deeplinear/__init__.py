"""deeplinear: Bayesian inference in deep linear networks at any depth-to-width ratio.

The prior over a deep linear network's outputs is a Gaussian mixture over a random
``D x D`` matrix ``Q = Vbar Vbar^T`` (see ``docs/theory.md``). This package samples its
laws exactly at finite width (:class:`FiniteWidthPrior`), in the proportional limit
``L/N -> a`` (:class:`ProportionalLimitPrior`) and at infinite width
(:class:`NNGPPrior`), and checks them against brute-force networks
(:func:`sample_network_outputs`) and closed forms (:mod:`deeplinear.moments`).

Importing deeplinear changes no global JAX state; for float64 run
``jax.config.update("jax_enable_x64", True)`` yourself (or use ``jax.enable_x64()``).
"""

from deeplinear import moments
from deeplinear.network import network_forward, sample_network_outputs
from deeplinear.priors import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, VbarPrior

__version__ = "0.1.0"

__all__ = [
    "FiniteWidthPrior",
    "NNGPPrior",
    "ProportionalLimitPrior",
    "VbarPrior",
    "moments",
    "network_forward",
    "sample_network_outputs",
]
