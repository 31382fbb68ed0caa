"""Independent exact references for the test suite (never the code under test).

``product_moments`` computes E[Q] and E[Q_ij Q_kl] for Q = Vbar Vbar^T, Vbar = M_K ... M_1,
where the M_k are independent lower-triangular matrices with *independent entries*
of known raw moments. Both the Bartlett factors and the Euler steps of the limit
simulator are of that form, so this gives exact moments of either, by brute-force
tensor contraction rather than the closed forms of ``deeplinear.moments``.
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


def product_moments(entry_moments):
    """Exact E[Q] (D, D) and E[Q_ij Q_kl] (D, D, D, D) for a list of per-factor entry moments."""
    D = entry_moments[0].shape[0]
    eq = np.eye(D)
    eqq = np.einsum("ij,kl->ijkl", np.eye(D), np.eye(D))
    cache = {}
    for mom in entry_moments:
        key = mom.tobytes()
        if key not in cache:
            cache[key] = _step_tensors(mom)
        t2, t4 = cache[key]
        # Q' = M Q M^T:  Q'_ij = sum_ab M_ia Q_ab M_jb.
        eq = np.einsum("iajb,ab->ij", t2, eq)
        eqq = np.einsum("iajbkcld,abcd->ijkl", t4, eqq)
    return eq, eqq
