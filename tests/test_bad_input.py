"""Bad input raises ValueError/TypeError naming the argument, before any work."""

import jax
import numpy as np
import pytest

from deeplinear import FiniteWidthPrior, NNGPPrior, ProportionalLimitPrior, sample_network_outputs
from deeplinear import moments as mom

KEY = jax.random.key(0)
X = np.ones((3, 2))

CASES = [
    # (callable, exception, fragment of the message)
    (lambda: FiniteWidthPrior((4, 1, 4), 2), ValueError, "N_l >= D"),
    (lambda: FiniteWidthPrior((4, 2.5), 2), TypeError, "widths[1]"),
    (lambda: FiniteWidthPrior((4, 0), 1), ValueError, "widths[1]"),
    (lambda: FiniteWidthPrior((4, -3), 1), ValueError, "widths[1]"),
    (lambda: FiniteWidthPrior((), 1), ValueError, "widths"),
    (lambda: FiniteWidthPrior(4, 1), TypeError, "widths"),
    (lambda: FiniteWidthPrior((4,), 0), ValueError, "num_outputs"),
    (lambda: FiniteWidthPrior((4,), 2.0), TypeError, "num_outputs"),
    (lambda: FiniteWidthPrior.from_depth_width(0, 4, 1), ValueError, "depth"),
    (lambda: FiniteWidthPrior.from_depth_width(3, 1.5, 1), TypeError, "width"),
    (lambda: FiniteWidthPrior.from_depth_width(3, 2, 3), ValueError, "N_l >= D"),
    (lambda: ProportionalLimitPrior(0.0, 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(-1.0, 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(float("nan"), 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(float("inf"), 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior("1", 2), TypeError, "ratio"),
    (lambda: ProportionalLimitPrior(np.ones(2), 2), ValueError, "ratio"),
    (lambda: ProportionalLimitPrior(1.0, 2, num_steps=0), ValueError, "num_steps"),
    (lambda: ProportionalLimitPrior(1.0, 2, num_steps=3.5), TypeError, "num_steps"),
    (lambda: NNGPPrior(0), ValueError, "num_outputs"),
    (lambda: NNGPPrior(2).sample_q(0), TypeError, "key"),
    (lambda: NNGPPrior(2).sample_q(np.array([1, 2, 3], np.uint32)), TypeError, "key"),
    (lambda: FiniteWidthPrior((3,), 1).sample_vbar(KEY, (-1,)), ValueError, "sample_shape"),
    (lambda: FiniteWidthPrior((3,), 1).sample_vbar(KEY, "10"), TypeError, "sample_shape"),
    (lambda: FiniteWidthPrior((3,), 1).sample_vbar(KEY, 2, dtype=np.int32), TypeError, "dtype"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.ones(3)), ValueError, "rank 2"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.full((2, 2), np.nan)), ValueError, "NaN"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.full((2, 2), np.inf)), ValueError, "NaN"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.ones((0, 2))), ValueError, "non-empty"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, np.array([["a"]], object)), TypeError, "X"),
    (lambda: FiniteWidthPrior((3,), 1).sample_outputs(KEY, X, lambda_star=-1.0), ValueError, "lambda_star"),
    (lambda: sample_network_outputs(KEY, X, (3, 3), 2, 0), ValueError, "num_samples"),
    (lambda: sample_network_outputs(KEY, X, (3, 0), 2, 10), ValueError, "widths[1]"),
    (lambda: sample_network_outputs(KEY, X, (3, 3), 2, 10, layer_scales=[1, 1]), ValueError, "layer_scales"),
    (lambda: sample_network_outputs(KEY, X, (3, 3), 2, 10, layer_scales=[1, 0, 1]), ValueError, "layer_scales"),
    (lambda: sample_network_outputs(KEY, X[None], (3,), 2, 10), ValueError, "rank 2"),
    (lambda: sample_network_outputs("seed", X, (3,), 2, 10), TypeError, "key"),
    (lambda: mom.finite_q_second_moments((1, 3), 2), ValueError, "N_l >= D"),
    (lambda: mom.limit_q_second_moments(-0.5, 2), ValueError, "ratio"),
    (lambda: mom.finite_vbar_diag_moment((3,), 1, -4.0), ValueError, "s must"),
]


@pytest.mark.parametrize("call,exc,fragment", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_bad_input_raises_clear_error(call, exc, fragment):
    with pytest.raises(exc) as info:
        call()
    assert fragment in str(info.value)


def test_bad_input_is_caught_before_compilation(monkeypatch):
    # A traced computation would call jax.jit/lax; bad widths must fail first.
    calls = []
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError):
        FiniteWidthPrior((5, 1), 2).sample_vbar(KEY, 3)
    assert not calls


def test_import_changes_no_global_state():
    import subprocess
    import sys

    code = (
        "import jax; import deeplinear; "
        "assert not jax.config.jax_enable_x64; assert jax.device_count() == 1; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
