"""Independent exact references for the test suite (never the code under test).

``product_moments`` computes E[Q] and E[Q_ij Q_kl] for Q = Vbar Vbar^T, Vbar = M_K ... M_1,
where the M_k are independent lower-triangular matrices with *independent entries*
of known raw moments. Both the Bartlett factors and the Euler steps of the limit
simulator are of that form, so this gives exact moments of either, by brute-force
tensor contraction rather than the closed forms of ``deeplinear.moments``.

``second_order_step_tensors`` gives the same tensors for one step of the limit simulator's
second-order scheme (docs/limit_timestep_error.md), whose entries depend on each other: by
tensor-product Gaussian quadrature over the step's normals (exact in the off-diagonal normals,
in which the step is a polynomial of degree <= 8) and a fine Gauss-Legendre rule for the
variance integral. ``chain_moments`` then multiplies K independent steps.
"""

import itertools
import math

import numpy as np
import scipy.special as sp


def _normal_moment(var, m):
    return 0.0 if m % 2 else var ** (m / 2) * math.prod(range(m - 1, 0, -2))


def bartlett_entry_moments(n, D):
    """Raw moments E[V_rs^m] (m = 0..4) of V = T/sqrt(n), T the Bartlett factor."""
    mom = np.zeros((D, D, 5))
    for r in range(D):
        nu = n - r  # chi^2 dof n - r + 1 with 1-based r
        for m in range(5):
            mom[r, r, m] = (2 / n) ** (m / 2) * math.exp(sp.gammaln((nu + m) / 2) - sp.gammaln(nu / 2))
        for s in range(r):
            mom[r, s] = [_normal_moment(1 / n, m) for m in range(5)]
    for r, s in itertools.product(range(D), range(D)):
        if s > r:
            mom[r, s, 0] = 1.0
    return mom


def euler_entry_moments(h, D):
    """Raw moments of one Euler step of the limit simulator (theory.md §3)."""
    mom = np.zeros((D, D, 5))
    for r in range(D):
        mu, var = -(r + 1) * h / 2, h / 2
        mom[r, r] = [math.exp(m * mu + m * m * var / 2) for m in range(5)]
        for s in range(r):
            mom[r, s] = [_normal_moment(h, m) for m in range(5)]
        for s in range(r + 1, D):
            mom[r, s, 0] = 1.0
    return mom


def _step_tensors(mom):
    """E[M_ia M_jb] (D^4) and E[M_ia M_jb M_kc M_ld] (D^8) from independent entries."""
    D = mom.shape[0]
    t2 = np.zeros((D,) * 4)
    t4 = np.zeros((D,) * 8)
    for i, a, j, b in itertools.product(range(D), repeat=4):
        cnt = {}
        for e in ((i, a), (j, b)):
            cnt[e] = cnt.get(e, 0) + 1
        t2[i, a, j, b] = math.prod(mom[e][c] for e, c in cnt.items())
    for idx in itertools.product(range(D), repeat=8):
        cnt = {}
        for e in zip(idx[0::2], idx[1::2]):
            cnt[e] = cnt.get(e, 0) + 1
        t4[idx] = math.prod(mom[e][c] for e, c in cnt.items())
    return t2, t4


def chain_moments(step_tensors):
    """Exact E[Q] (D, D) and E[Q_ij Q_kl] (D, D, D, D) for Q = Vbar Vbar^T, Vbar = M_K ... M_1 with
    independent factors, given each factor's ``(E[M_ia M_jb], E[M_ia M_jb M_kc M_ld])``."""
    D = step_tensors[0][0].shape[0]
    eq = np.eye(D)
    eqq = np.einsum("ij,kl->ijkl", np.eye(D), np.eye(D))
    for t2, t4 in step_tensors:
        # Q' = M Q M^T:  Q'_ij = sum_ab M_ia Q_ab M_jb.
        eq = np.einsum("iajb,ab->ij", t2, eq)
        eqq = np.einsum("iajbkcld,abcd->ijkl", t4, eqq)
    return eq, eqq


def product_moments(entry_moments):
    """Exact E[Q] (D, D) and E[Q_ij Q_kl] (D, D, D, D) for a list of per-factor entry moments."""
    cache, tensors = {}, []
    for mom in entry_moments:
        key = mom.tobytes()
        if key not in cache:
            cache[key] = _step_tensors(mom)
        tensors.append(cache[key])
    return chain_moments(tensors)


def _hermite(n):
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def second_order_step_tensors(h, D, diagonal_nodes=None, legendre_nodes=16):
    """``(E[M_ia M_jb], E[M_ia M_jb M_kc M_ld])`` of one step of the second-order limit scheme:
    ``M_rr = exp(dZ_r)``, ``dZ_r = -r h/2 + sqrt(h/2) g_r``; for ``r > s``
    ``M_rs = sqrt(v_rs + (r-s-1) h^2/4) xi_rs + 1/2 sum_{s<k<r} G_rk G_ks``, ``G_rs = sqrt(v_rs) xi_rs``,
    ``v_rs = h int_0^1 exp(2 dZ_r (1-u) + 2 dZ_s u + 2 h u (1-u)) du``."""
    if D > 3:
        raise ValueError("the quadrature grid grows as nodes^(D(D+1)/2): D <= 3 only")
    gx, gw = _hermite(diagonal_nodes or (20 if D <= 2 else 8))
    xx, xw = _hermite(5)  # exact for the step's polynomials (degree <= 8) in the off-diagonal normals
    u, uw = np.polynomial.legendre.leggauss(legendre_nodes)
    u, uw = (u + 1) / 2, uw / 2
    pairs = [(r, s) for r in range(D) for s in range(r)]
    axes = [gx] * D + [xx] * len(pairs)
    weights = [gw] * D + [xw] * len(pairs)
    nodes = [g.ravel() for g in np.meshgrid(*axes, indexing="ij")]
    weight = np.prod([g.ravel() for g in np.meshgrid(*weights, indexing="ij")], axis=0)
    dz = [-(r + 1) * h / 2 + np.sqrt(h / 2) * nodes[r] for r in range(D)]
    xi = dict(zip(pairs, nodes[D:]))
    v = {(r, s): h * np.sum(uw[:, None] * np.exp(2 * dz[r] * (1 - u[:, None]) + 2 * dz[s] * u[:, None]
                                                 + 2 * h * u[:, None] * (1 - u[:, None])), axis=0)
         for r, s in pairs}
    M = np.zeros((len(weight), D, D))
    for r in range(D):
        M[:, r, r] = np.exp(dz[r])
    for r, s in pairs:
        M[:, r, s] = np.sqrt(v[r, s] + (r - s - 1) * h * h / 4) * xi[r, s]
        for k in range(s + 1, r):
            M[:, r, s] += 0.5 * np.sqrt(v[r, k]) * xi[r, k] * np.sqrt(v[k, s]) * xi[k, s]
    t2 = np.einsum("n,nia,njb->iajb", weight, M, M)
    t4 = np.zeros((D,) * 8)
    for start in range(0, len(weight), 20_000):
        m, w = M[start:start + 20_000], weight[start:start + 20_000]
        t4 += np.einsum("n,nia,njb,nkc,nld->iajbkcld", w, m, m, m, m, optimize=True)
    return t2, t4
