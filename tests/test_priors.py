"""Priors over Vbar/Q against brute-force networks, closed forms and exact references.

Tolerances are Monte Carlo standard errors times ``Z``; sizes are named constants.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
import scipy.stats as st
from conftest import mc_mean_and_se
from reference import (
    bartlett_entry_moments,
    chain_moments,
    euler_entry_moments,
    product_moments,
    second_order_step_tensors,
)

from deeplinear import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, sample_network_outputs
from deeplinear import moments as mom

Z = 5.0  # sigma bound for every MC comparison
KS_ALPHA = 1e-3  # two-sample / one-sample KS rejection level
N_NETWORKS = 200_000  # brute-force networks per configuration
N_PRIOR = 200_000  # Bartlett / limit draws per configuration
X_SMALL = np.array([[1.0, 0.5, -0.3], [0.0, 1.0, 0.8], [0.3, 0.2, -1.0]])  # P = 3 inputs (rows), N0 = 3

NETWORK_CASES = [
    pytest.param(1, (4, 4, 4), id="D1-equal"),
    pytest.param(1, (2, 7, 3), id="D1-unequal"),
    pytest.param(2, (5, 5, 5), id="D2-equal"),
    pytest.param(2, (3, 6, 2, 4), id="D2-unequal"),
    pytest.param(3, (4, 4), id="D3-equal"),
    pytest.param(3, (3, 7, 5), id="D3-unequal"),
]


def _assert_moments(f, widths, D, label):
    """Second and fourth moment tensors of f (n, P, D) against the closed forms."""
    n, P, _ = f.shape
    x = np.asarray(f, np.float64).reshape(n, P * D)  # flat index p * D + i

    def at(i, p):
        return p * D + i

    K = mom.linear_kernel(X_SMALL)
    second = mom.output_covariance(np.eye(D), K).reshape(P * D, P * D)
    m2, se2 = mc_mean_and_se(x[:, :, None] * x[:, None, :])
    assert np.all(np.abs(m2 - second) <= Z * se2 + 1e-12), f"{label}: second moments"
    fourth = mom.output_fourth_moments(mom.finite_q_second_moments(widths, D), K).reshape((P * D,) * 4)
    # Entries chosen a priori. Testing all ~100 entries at once takes the max of heavy-tailed
    # z-scores (8th moments of f), whose SE is itself noisy.
    last = D - 1
    entries = {
        "f1(x1)^4": (at(0, 0),) * 4,
        "f1(x1)^2 f1(x2)^2 (cross-input)": (at(0, 0), at(0, 0), at(0, 1), at(0, 1)),
        "f1(x1)^3 f1(x3) (cross-input)": (at(0, 0), at(0, 0), at(0, 0), at(0, 2)),
        "f1(x1)^2 fD(x1)^2 (cross-output)": (at(0, 0), at(0, 0), at(last, 0), at(last, 0)),
        "f1(x1) f1(x2) fD(x1) fD(x2) (cross-output)": (at(0, 0), at(0, 1), at(last, 0), at(last, 1)),
        "fD(x3)^4": (at(last, 2),) * 4,
    }
    for name, (a, b, c, d) in entries.items():
        m4, se4 = mc_mean_and_se(x[:, a] * x[:, b] * x[:, c] * x[:, d])
        assert abs(m4 - fourth[a, b, c, d]) <= Z * se4, f"{label}: {name}: {m4} vs {fourth[a, b, c, d]}"


@pytest.mark.device
@pytest.mark.parametrize("D,widths", NETWORK_CASES)
def test_bartlett_prior_matches_brute_force_networks(D, widths, dtype):
    X = jnp.asarray(X_SMALL, dtype)
    f_net = sample_network_outputs(jax.random.key(1), X, widths, D, N_NETWORKS, dtype=dtype)
    f_bar = FiniteWidthPrior(widths, D).sample_outputs(jax.random.key(2), X, N_PRIOR, dtype=dtype)
    assert f_net.dtype == dtype and f_bar.dtype == dtype
    assert f_bar.shape == (N_PRIOR, X.shape[0], D)
    # Both routes against the exact moments (second, fourth, cross-output, cross-input).
    _assert_moments(f_net, widths, D, "network")
    _assert_moments(f_bar, widths, D, "bartlett")
    # Direct two-sample comparisons of the laws, on the first and last coordinates.
    for i, p in [(0, 0), (D - 1, 2)]:
        ks = st.ks_2samp(np.asarray(f_net[:, p, i]), np.asarray(f_bar[:, p, i]))
        assert ks.pvalue > KS_ALPHA, f"KS f[{i},{p}]: p = {ks.pvalue}"


def test_fourth_moment_shows_non_gaussianity():
    # E f^4 / (E f^2)^2 = 3 E[Q_11^2] > 3: the prior is a genuine mixture.
    q2 = mom.finite_q_second_moments((4, 4, 4), 1)
    assert q2.alpha == pytest.approx((1 + 2 / 4) ** 3)  # > 1: excess kurtosis 3 (alpha - 1) > 0


def test_closed_form_q_moments_match_exact_tensor_recursion():
    for D, widths in [(2, (3, 6, 2, 4)), (3, (3, 7, 5))]:
        eq, eqq = product_moments([bartlett_entry_moments(n, D) for n in widths])
        np.testing.assert_allclose(eq, np.eye(D), atol=1e-12)
        np.testing.assert_allclose(mom.finite_q_second_moments(widths, D).tensor(), eqq, rtol=1e-12)


@pytest.mark.parametrize("widths", [(3, 9, 4), (50,) * 20])
def test_finite_log_vbar_diag_law(widths, dtype):
    D = 3
    vbar = FiniteWidthPrior(widths, D).sample_vbar(jax.random.key(3), N_PRIOR, dtype=dtype)
    logd = np.log(np.asarray(jnp.diagonal(vbar, axis1=-2, axis2=-1), np.float64))
    mean_ref = mom.finite_log_vbar_diag_mean(widths, D)
    var_ref = mom.finite_log_vbar_diag_var(widths, D)
    m, se = mc_mean_and_se(logd)
    assert np.all(np.abs(m - mean_ref) <= Z * se)
    v, se_v = mc_mean_and_se((logd - mean_ref) ** 2)
    assert np.all(np.abs(v - var_ref) <= Z * se_v)
    # Exact moment formula E[Vbar_rr^s] at s = 1 against MC.
    m1, se1 = mc_mean_and_se(np.exp(logd))
    assert np.all(np.abs(m1 - mom.finite_vbar_diag_moment(widths, D, 1.0)) <= Z * se1)


@pytest.mark.parametrize("ratio,num_steps", [(0.5, 1), (1.0, 16), (3.0, 64)])
def test_limit_log_vbar_diag_is_exactly_lognormal(ratio, num_steps, dtype):
    D = 3
    prior = ProportionalLimitPrior(ratio, D, num_steps)
    vbar = prior.sample_vbar(jax.random.key(4), N_PRIOR // 4, dtype=dtype)
    logd = np.log(np.asarray(jnp.diagonal(vbar, axis1=-2, axis2=-1), np.float64))
    for r in range(D):
        ref = st.norm(-ratio * (r + 1) / 2, np.sqrt(ratio / 2))
        assert st.kstest(logd[:, r], ref.cdf).pvalue > KS_ALPHA
    np.testing.assert_allclose(mom.limit_log_vbar_diag_mean(ratio, D), -ratio * np.arange(1, 4) / 2)


@pytest.mark.device
def test_limit_log_q11_law(dtype):
    ratio = 0.7
    q = ProportionalLimitPrior(ratio, 2, 8).sample_q(jax.random.key(5), N_PRIOR // 4, dtype=dtype)
    ref = st.norm(-ratio, np.sqrt(2 * ratio))
    assert st.kstest(np.log(np.asarray(q[:, 0, 0], np.float64)), ref.cdf).pvalue > KS_ALPHA


@pytest.mark.parametrize(
    "prior",
    [FiniteWidthPrior((3, 9, 4), 3), FiniteWidthPrior.from_depth_width(8, 4, 2)],
    ids=["unequal", "equal"],
)
def test_finite_mean_q_is_identity(prior, dtype):
    q = prior.sample_q(jax.random.key(6), N_PRIOR, dtype=dtype)
    m, se = mc_mean_and_se(q)
    assert np.all(np.abs(m - np.eye(prior.num_outputs)) <= Z * se)


def test_q_orthogonal_invariance(dtype):
    """Exact for finite products. The K-step limit simulator is invariant only up to
    O(h) (E[Q_rr] = 1 + O(h) for r > 1); that gap is tested in the time-step test."""
    prior = FiniteWidthPrior((3, 9, 4), 3)
    n = N_PRIOR // 2
    q = np.asarray(prior.sample_q(jax.random.key(7), 2 * n, dtype=dtype), np.float64)
    q_a, q_b = q[:n], q[n:]
    D = prior.num_outputs
    for r in range(1, D):  # Q_rr =d Q_11 although Vbar_rr differ
        assert st.ks_2samp(q_a[:, 0, 0], q_b[:, r, r]).pvalue > KS_ALPHA
    o, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))
    rotated = o @ q_b @ o.T
    for i, j in [(0, 0), (0, 1), (D - 1, D - 1)]:
        assert st.ks_2samp(q_a[:, i, j], rotated[:, i, j]).pvalue > KS_ALPHA


def _exact_scheme_moments(scheme, ratio, D, K):
    """The K-step scheme's exact E[Q] and E[Q Q] from tests/reference.py."""
    if scheme == "euler":
        return product_moments([euler_entry_moments(ratio / K, D)] * K)
    return chain_moments([second_order_step_tensors(ratio / K, D)] * K)


@pytest.mark.parametrize("scheme,D,ratio,num_steps", [
    ("euler", 2, 1.0, 8), ("euler", 2, 0.5, 3), ("second-order", 2, 1.0, 8), ("second-order", 3, 0.5, 1)])
def test_limit_simulator_moments_match_exact_discretization(scheme, D, ratio, num_steps, dtype):
    """The simulator is the scheme the reference analyses: MC moments of Q equal the K-step
    scheme's exact ones. D = 3 exercises the second-order scheme's iterated-integral term: without
    it, E[Q33] at a = 0.5, K = 1 moves by 11 standard errors."""
    prior = ProportionalLimitPrior(ratio, D, num_steps, scheme=scheme)
    q = np.asarray(prior.sample_q(jax.random.key(8), N_PRIOR, dtype=dtype), np.float64)
    eq, eqq = _exact_scheme_moments(scheme, ratio, D, num_steps)
    m, se = mc_mean_and_se(q)
    assert np.all(np.abs(m - eq) <= Z * se)
    last = D - 1
    for i, j, k, l in [(0, 0, 0, 0), (0, 1, 0, 1), (last, last, last, last), (0, 0, last, last), (0, last, 0, last),
                       (0, 1, 1, last)]:
        m2, se2 = mc_mean_and_se(q[:, i, j] * q[:, k, l])
        assert abs(m2 - eqq[i, j, k, l]) <= Z * se2, (i, j, k, l)


SECOND_ORDER_RATIOS = (0.5, 1.0, 2.0)  # issue 16's acceptance


def test_limit_second_order_scheme_beats_euler_with_a_quarter_of_the_steps():
    """Exact errors (no Monte Carlo) against the limit's closed form: the second-order scheme at
    K = 16 (the default) is closer to the limit in E[Q12^2] and E[Q22^2] than Euler at K = 64, and
    its error shrinks about 4x per halving of the step (D = 2 and D = 3)."""
    for ratio in SECOND_ORDER_RATIOS:
        limit = mom.limit_q_second_moments(ratio, 2).tensor()
        _, new = _exact_scheme_moments("second-order", ratio, 2, 16)
        _, old = _exact_scheme_moments("euler", ratio, 2, 64)
        for idx in [(0, 1, 0, 1), (1, 1, 1, 1)]:
            assert abs(new[idx] - limit[idx]) < abs(old[idx] - limit[idx]) / 4, (ratio, idx)
    assert ProportionalLimitPrior(1.0, 2).num_steps == 16
    for D, ratio, idx in [(2, 1.0, (1, 1, 1, 1)), (2, 2.0, (1, 1, 1, 1)), (3, 0.5, (2, 2, 2, 2))]:
        limit = mom.limit_q_second_moments(ratio, D).tensor()
        errs = [abs(_exact_scheme_moments("second-order", ratio, D, K)[1][idx] - limit[idx]) for K in (8, 16, 32)]
        assert 3.3 < errs[0] / errs[1] < 4.7 and 3.3 < errs[1] / errs[2] < 4.7, (D, ratio, errs)


def test_limit_simulator_timestep_error_is_first_order():
    # Exact moments of the K-step Euler scheme against the limit's closed form: error ~ c/K.
    ratio, D = 1.0, 2
    limit = mom.limit_q_second_moments(ratio, D).tensor()
    errs, gaps = [], []
    for K in (16, 32, 64):
        eq, eqq = product_moments([euler_entry_moments(ratio / K, D)] * K)
        errs.append(np.abs(eqq - limit).max() + np.abs(eq - np.eye(D)).max())
        # Orthogonal invariance of the limit (Q_22 =d Q_11) is broken at O(h) by the scheme.
        gaps.append(abs(eqq[1, 1, 1, 1] - eqq[0, 0, 0, 0]) + abs(eq[1, 1] - eq[0, 0]))
    for e in (errs, gaps):
        assert 1.8 < e[0] / e[1] < 2.2 and 1.8 < e[1] / e[2] < 2.2


def test_finite_products_converge_to_limit_at_rate_one_over_n():
    ratio, D = 1.0, 2
    limit = mom.limit_q_second_moments(ratio, D)
    errs = []
    for N in (32, 64, 128, 256):
        fin = mom.finite_q_second_moments((N,) * int(ratio * N), D)
        errs.append(abs(fin.beta - limit.beta) + abs(fin.alpha - limit.alpha))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.8) & (ratios < 2.2)), ratios
    # D = 1: E Q^2 = (1 + 2/N)^(aN) -> e^(2a) (log-normal limit).
    assert mom.finite_q_second_moments((4000,) * 4000, 1).alpha == pytest.approx(np.exp(2), rel=2e-3)


def test_limit_simulator_vs_finite_products_monte_carlo(dtype):
    """MC: finite Bartlett products with L = aN approach the simulator's moments at O(1/N). The
    reference is exact for the simulator's K steps (tensor recursion), so any K serves."""
    ratio, D, K = 1.0, 2, 16
    q_lim = np.asarray(
        ProportionalLimitPrior(ratio, D, K).sample_q(jax.random.key(9), N_PRIOR, dtype=dtype), np.float64
    )
    lim12, se_lim = mc_mean_and_se(q_lim[:, 0, 1] ** 2)
    eq, eqq = _exact_scheme_moments("second-order", ratio, D, K)
    for N in (2, 4, 8):
        prior = FiniteWidthPrior.from_depth_width(int(ratio * N), N, D)
        q = np.asarray(prior.sample_q(jax.random.key(10 + N), N_PRIOR, dtype=dtype), np.float64)
        fin12, se_fin = mc_mean_and_se(q[:, 0, 1] ** 2)
        expected = mom.finite_q_second_moments(prior.widths, D).beta - eqq[0, 1, 0, 1]
        assert abs((fin12 - lim12) - expected) <= Z * np.hypot(se_fin, se_lim), N


def test_nngp_prior_is_identity(dtype):
    q = NNGPPrior(3).sample_q(jax.random.key(0), (4, 2), dtype=dtype)
    assert q.shape == (4, 2, 3, 3) and q.dtype == dtype
    np.testing.assert_array_equal(np.asarray(q), np.broadcast_to(np.eye(3), (4, 2, 3, 3)))


# -- NumPyro sites, pytrees, jit/vmap, differentiability ---------------------------------


@pytest.mark.parametrize(
    "prior,sites",
    [
        (FiniteWidthPrior((3, 4), 2), {"w_bartlett_diag": (2, 2), "w_bartlett_offdiag": (2, 1)}),
        (FiniteWidthPrior((3, 4), 1), {"w_bartlett_diag": (2, 1)}),
        (ProportionalLimitPrior(0.5, 3, 5), {"w_brownian_diag": (5, 3), "w_brownian_offdiag": (5, 3)}),
        (NNGPPrior(2), {}),
    ],
    ids=["finite", "finite-D1", "limit", "nngp"],
)
def test_numpyro_sites_share_the_deterministic_map(prior, sites, dtype):
    def model():
        numpyro.deterministic("vbar", prior.numpyro_vbar(prefix="w_"))

    tr = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace()
    latent = {k: v for k, v in tr.items() if v["type"] == "sample"}
    assert {k: v["value"].shape for k, v in latent.items()} == sites
    latents = {k[2:]: v["value"] for k, v in latent.items()}
    np.testing.assert_allclose(tr["vbar"]["value"], prior.vbar_from_latents(latents))
    assert tr["vbar"]["value"].dtype == dtype


def test_priors_are_pytrees_and_jit_vmap_friendly(dtype):
    prior = ProportionalLimitPrior(1.5, 2, 8)
    leaves, treedef = jax.tree_util.tree_flatten(prior)
    assert leaves == [1.5]
    again = jax.tree_util.tree_unflatten(treedef, leaves)
    assert (again.ratio, again.num_outputs, again.num_steps) == (1.5, 2, 8)

    @jax.jit
    def draw(p, key):
        return p.sample_q(key, (3,), dtype=dtype)

    key = jax.random.key(0)
    np.testing.assert_allclose(draw(prior, key), prior.sample_q(key, (3,), dtype=dtype), rtol=1e-6)
    keys = jax.random.split(key, 4)
    batched = jax.vmap(lambda k: FiniteWidthPrior((3, 3), 2).sample_vbar(k, dtype=dtype))(keys)
    assert batched.shape == (4, 2, 2)
    # Same seed -> same draws.
    np.testing.assert_array_equal(prior.sample_q(key, 5, dtype=dtype), prior.sample_q(key, 5, dtype=dtype))


def test_limit_map_is_differentiable_in_ratio(dtype):
    prior = ProportionalLimitPrior(1.0, 3, 10)
    latents = prior.sample_latents(jax.random.key(11), dtype=dtype)

    def q01(a):
        vbar = prior.replace(ratio=a).vbar_from_latents(latents)
        return (vbar @ vbar.T)[2, 0]

    g = jax.grad(q01)(jnp.asarray(1.0, dtype))
    assert g.dtype == dtype
    with jax.enable_x64(True):  # reference: float64 central difference on the same latents
        latents = {k: v.astype(jnp.float64) for k, v in latents.items()}
        eps = 1e-6
        fd = (q01(jnp.float64(1.0 + eps)) - q01(jnp.float64(1.0 - eps))) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-4 if dtype == jnp.float32 else 1e-7)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.5, 49.5])
def test_fast_gamma_sampler_is_exact(alpha, dtype):
    from deeplinear._random import standard_gamma

    x = standard_gamma(jax.random.key(12), alpha, (N_PRIOR // 4,), dtype)
    assert x.dtype == dtype and bool(jnp.all(x > 0))
    assert st.kstest(np.asarray(x, np.float64), st.gamma(alpha).cdf).pvalue > KS_ALPHA


def test_fast_gamma_fallback_path_is_exact():
    # alpha = 1 rejects ~5%: a 10^4 array overflows the 64 + n/64 buffer, forcing the fallback.
    from deeplinear._random import standard_gamma_with_info

    x, num_rejected, buffer_size = standard_gamma_with_info(jax.random.key(13), 1.0, (10_000,), jnp.float32)
    assert int(num_rejected) > buffer_size  # the whole-array fallback loop ran
    assert st.kstest(np.asarray(x, np.float64), st.gamma(1.0).cdf).pvalue > KS_ALPHA


GAMMA_REPRODUCED = {"float32": 1e-6, "float64": 1e-12}  # one block function, two programs: rounding only


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 1, 4)])
def test_flat_draws_are_the_shaped_draws(shape, dtype):
    """The package draws normals and uniforms flat and reshapes them (they compile faster); under
    JAX's partitionable Threefry these are JAX's shaped draws bit for bit, directly and under vmap
    (a JAX that numbered the entries otherwise would change every seeded result: this says so)."""
    from deeplinear._random import normal, uniform

    key = jax.random.PRNGKey(11)
    assert np.array_equal(normal(key, shape, dtype), jax.random.normal(key, shape, dtype))
    assert np.array_equal(uniform(key, shape, dtype, -2.0, 3.0), jax.random.uniform(key, shape, dtype, -2.0, 3.0))
    keys = jax.random.split(key, 3)
    assert np.array_equal(jax.vmap(lambda k: normal(k, shape, dtype))(keys),
                          jax.vmap(lambda k: jax.random.normal(k, shape, dtype))(keys))


def test_limit_latents_drawn_flat_are_its_distributions_draws(dtype):
    """``sample_latents`` of the limit prior draws flat; the numbers are those of sampling its
    ``latent_distributions`` with the same split keys (what the base class does)."""
    prior = ProportionalLimitPrior(ratio=0.5, num_outputs=3, num_steps=8)
    drawn = prior.sample_latents(jax.random.key(5), (4, 2), dtype)
    dists = prior.latent_distributions(dtype)
    for k, (name, d) in zip(jax.random.split(jax.random.key(5), len(dists)), dists.items()):
        assert drawn[name].dtype == dtype
        assert np.array_equal(drawn[name], d.sample(k, (4, 2)))


def test_fast_gamma_blocks_are_one_program_and_the_same_inside_jit(dtype):
    """The Gamma variates come in fixed blocks: the same draws eagerly and in a trace for one key,
    and one compiled block program for every finite prior's widths and depth."""
    from deeplinear import _random

    alpha = np.array([0.5, 3.0, 40.0])
    shape = (2 * _random.GAMMA_BLOCK // 3 + 5, 3)  # two blocks, the second padded
    eager = _random.standard_gamma(jax.random.key(3), alpha, shape, dtype)
    traced = jax.jit(lambda k: _random.standard_gamma(k, alpha, shape, dtype))(jax.random.key(3))
    assert eager.shape == shape and eager.dtype == dtype
    np.testing.assert_allclose(np.asarray(eager), np.asarray(traced), rtol=GAMMA_REPRODUCED[np.dtype(dtype).name])
    FiniteWidthPrior((2,), 2).sample_q(0, 10, dtype)  # compiles the block program for this key type
    programs = _random._gamma_block_program._cache_size()
    for widths, D in (((3,), 1), ((4, 5), 2), ((8,) * 6, 3), ((64,) * 40, 2)):
        FiniteWidthPrior(widths, D).sample_q(1, 500, dtype)
        FiniteWidthPrior(widths, D).sample_outputs(2, np.ones((3, 2)), 7, dtype=dtype)
    assert _random._gamma_block_program._cache_size() == programs


def test_priors_compare_replace_and_stay_immutable():
    import dataclasses

    assert ProportionalLimitPrior(1.0, 2) == ProportionalLimitPrior(1.0, 2)
    assert ProportionalLimitPrior(1.0, 2) != ProportionalLimitPrior(2.0, 2)
    assert hash(ProportionalLimitPrior(1.0, 2)) == hash(ProportionalLimitPrior(1.0, 2))
    assert ProportionalLimitPrior(1.0, 1).num_steps == 1  # D = 1: exact with one step
    assert FiniteWidthPrior((3, 4), 2) == FiniteWidthPrior([3, 4], 2)
    assert NNGPPrior(2).replace(num_outputs=3) == NNGPPrior(3)
    with pytest.raises(ValueError, match="widths\\[0\\] = 1 is smaller than num_outputs = 2"):
        FiniteWidthPrior((4,), 1).replace(widths=(1,), num_outputs=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ProportionalLimitPrior(1.0, 2).ratio = 3.0


def test_bartlett_law_is_defined_once():
    """The NumPyro site and the fast sampler read the Gamma law from one function."""
    from deeplinear.priors import bartlett_diag_gamma

    prior = FiniteWidthPrior((3, 9), 2)
    site = prior.latent_distributions(jnp.float32)["bartlett_diag"].base_dist
    conc, rate = bartlett_diag_gamma(prior.widths, 2, jnp.float32)
    np.testing.assert_array_equal(site.concentration, conc)
    np.testing.assert_array_equal(site.rate, rate)
