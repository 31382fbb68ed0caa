"""Print the exact time-step error tables of docs/limit_timestep_error.md.

    python docs/make_timestep_error.py

Exact K-step moments of each scheme of the limit simulator (tests/reference.py: tensor
contraction of exact step moments, by quadrature for the second-order scheme; no Monte Carlo)
against the limit's closed form (deeplinear.moments.limit_q_second_moments), for D = 2.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference import chain_moments, euler_entry_moments, product_moments, second_order_step_tensors  # noqa: E402

from deeplinear.moments import limit_q_second_moments  # noqa: E402

RATIOS = (0.5, 1.0, 2.0, 4.0)
STEPS = (4, 8, 16, 32, 64)


def main():
    print("| a | K | second order: error E[Q₁₂²] | error E[Q₂₂²] | error E[Q₂₂] "
          "| Euler: error E[Q₁₂²] | error E[Q₂₂²] | error E[Q₂₂] |")
    print("|---|---|---|---|---|---|---|---|")
    for a in RATIOS:
        limit = limit_q_second_moments(a, 2).tensor()
        for K in STEPS:
            eq2, eqq2 = chain_moments([second_order_step_tensors(a / K, 2)] * K)
            eq1, eqq1 = product_moments([euler_entry_moments(a / K, 2)] * K)
            cells = []
            for eq, eqq in ((eq2, eqq2), (eq1, eqq1)):
                cells += [eqq[0, 1, 0, 1] - limit[0, 1, 0, 1], eqq[1, 1, 1, 1] - limit[1, 1, 1, 1], eq[1, 1] - 1]
            print(f"| {a} | {K} | " + " | ".join(f"{c:+.5f}" for c in cells) + " |")
    print()
    print("Limit values: " + "; ".join(
        f"a = {a}: E[Q₁₂²] = {limit_q_second_moments(a, 2).beta:.4f}, E[Q₂₂²] = "
        f"{limit_q_second_moments(a, 2).tensor()[1, 1, 1, 1]:.4f}" for a in RATIOS))


if __name__ == "__main__":
    main()
