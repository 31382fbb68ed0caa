"""Every matrix product the library traces runs at full precision (``HIGHEST``), whatever the default.

NVIDIA GPUs multiply float32 matrices in TF32 unless a product asks for ``HIGHEST``
(:mod:`deeplinear._matmul`). These tests run on CPU: under a caller's default of ``bfloat16`` (what a
backend with a low-precision default gives), they read the precision of every product in what the
library traced -- the StableHLO of each program it compiled, dumped by JAX at compile time, and the
jaxprs of the functions that run inside other people's programs. A product left at the default
precision shows up here on any machine.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

import deeplinear as dl
from deeplinear.datasets import correlated_outputs
from deeplinear.evidence import log_evidence
from deeplinear.likelihood import KroneckerNormal, loo_log_likelihood_draws
from deeplinear.sbc import simulation_based_calibration

LOW_DEFAULT = "bfloat16"  # the caller's default precision in these tests: the backend's TF32, or lower
FULL = "HIGHEST"
DOT = re.compile(r"stablehlo\.dot(_general)?\b")


@pytest.fixture
def dumped_programs(tmp_path):
    """A function returning the StableHLO of every program compiled (or loaded from the cache) during the
    test so far, as ``{file name: text}``: JAX dumps each module it hands to the compiler, cache hits
    included."""
    folder = tmp_path / "programs"
    previous = jax.config.values["jax_dump_ir_to"]
    jax.config.update("jax_dump_ir_to", str(folder))
    try:
        yield lambda: {p.name: p.read_text() for p in sorted(folder.glob("*.mlir"))}
    finally:
        jax.config.update("jax_dump_ir_to", previous)


def _products_below_full_precision(programs: dict) -> dict:
    """``{program: [product lines]}`` of the dot products that do not ask for ``HIGHEST``."""
    low = {}
    for name, text in programs.items():
        lines = [line.strip()[:200] for line in text.splitlines() if DOT.search(line) and FULL not in line]
        if lines:
            low[name] = lines
    return low


@pytest.mark.device
def test_the_programs_of_a_fit_prediction_loo_evidence_sbc_and_prior_draws_multiply_at_full_precision(
        dumped_programs):
    ds = correlated_outputs()
    data = dl.RegressionData.linear(ds.X_train, ds.Y_train)
    prior = dl.ProportionalLimitPrior(ratio=1.0, num_outputs=2)
    work = {
        "fit and prediction": lambda: dl.fit(
            data, prior, ratio=dist.LogNormal(0.0, 1.0), noise_variance=dist.HalfNormal(1.0), noise_model="full",
            num_warmup=3, num_samples=4, num_chains=1, progress_bar=False,
        ).predict(ds.X_test).log_predictive_density(ds.Y_test),
        "evidence": lambda: log_evidence(data, prior, num_particles=4, progress_bar=False),
        "SBC": lambda: simulation_based_calibration(data, prior, num_simulations=2, num_warmup=3, num_samples=20,
                                                    thin=10, progress_bar=False),
        "prior draws": lambda: dl.FiniteWidthPrior(widths=(3, 3), num_outputs=2).sample_q(jax.random.key(0), 2),
        "network draws": lambda: dl.sample_network_outputs(jax.random.key(1), ds.X_test, widths=(4, 4),
                                                           num_outputs=2, sample_shape=(2,)),
    }
    seen: dict = {}
    for what, run in work.items():
        with jax.default_matmul_precision(LOW_DEFAULT):  # traced afresh: the default is part of jit's key
            run()
        programs = {name: text for name, text in dumped_programs().items() if name not in seen}
        seen.update(programs)
        assert any(DOT.search(text) for text in programs.values()), f"{what}: no program with a product was seen"
        assert _products_below_full_precision(programs) == {}, what


def _products_in(jaxpr) -> list:
    """The ``dot_general`` equations of ``jaxpr`` and of every jaxpr nested in it (jit, scan, cond, custom
    derivatives)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn)
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(inner, jax.extend.core.ClosedJaxpr):
                    found += _products_in(inner.jaxpr)
                elif isinstance(inner, jax.extend.core.Jaxpr):
                    found += _products_in(inner)
    return found


def _assert_full_precision(fun, *args):
    with jax.default_matmul_precision(LOW_DEFAULT):
        products = _products_in(jax.make_jaxpr(fun)(*args).jaxpr)
    assert products, "the function traced no matrix product: the check would be empty"
    full = jax.lax.Precision.HIGHEST
    assert [e.params["precision"] for e in products if e.params["precision"] != (full, full)] == []


@pytest.mark.device
def test_the_model_and_the_likelihood_multiply_at_full_precision_inside_a_callers_program():
    """A user's own NumPyro program (its log density and gradient) that calls the library's model."""
    ds = correlated_outputs()
    data = dl.RegressionData.linear(ds.X_train, ds.Y_train)
    prior = dl.ProportionalLimitPrior(ratio=1.0, num_outputs=2, num_steps=4)
    kwargs = dict(noise_variance=dist.HalfNormal(1.0), noise_model="full")
    @jax.jit
    def prior_draw():
        trace = handlers.trace(handlers.seed(dl.deep_linear_model, 0)).get_trace(data, prior, **kwargs)
        return {name: site["value"] for name, site in trace.items()
                if site["type"] == "sample" and not site["is_observed"]}

    params = prior_draw()

    def potential(p):
        return log_density(dl.deep_linear_model, (data, prior), kwargs, p)[0]

    _assert_full_precision(jax.grad(potential), params)
    q = jnp.asarray([[1.0, 0.3], [0.3, 0.8]])
    _assert_full_precision(lambda q: loo_log_likelihood_draws(q[None], jnp.ones(1), jnp.full(1, 0.5), data), q)
    y = jnp.asarray(np.asarray(ds.Y_train), jnp.float32)
    _assert_full_precision(lambda q: KroneckerNormal(q, 1.0, 0.5, data).log_prob(y), q)
    _assert_full_precision(lambda q: KroneckerNormal(q, 1.0, 0.5, data).sample(jax.random.key(0)), q)
