"""Batched work split over several devices gives one device's numbers (``deeplinear._devices``).

JAX fixes the number of host devices when it starts, so the check runs in a fresh process with four
CPU host devices: SBC's simulations, the evidence's particles, a fit's constrained draws and its LOO
terms are computed split over the four, then again with the splitting switched off (everything on
one device), from the same keys.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from deeplinear._devices import padded_blocks

DEVICES = 4
# float32: a device computes its rows as one device does, but XLA may vectorize a block of 2 rows
# differently from one of 8, which can move the last bits (measured: ranks, divergences, Q and the LOO
# terms bitwise equal; the log evidence 1e-7 apart)
SAME_NUMBERS_TOLERANCE = 1e-5

CODE = f"""
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"  # the host devices, also on a machine with a GPU
import json, warnings
import jax, numpy as np, numpyro.distributions as dist
import deeplinear as dl
import deeplinear._devices as devices
from deeplinear.evidence import log_evidence
warnings.simplefilter("ignore")
assert jax.local_device_count() == {DEVICES}
r = np.random.default_rng(0)
data = dl.RegressionData.linear(r.normal(size=(12, 3)), r.normal(size=(12, 2)))
prior = dl.ProportionalLimitPrior(0.5, 2, num_steps=4)

def run():
    sbc = dl.simulation_based_calibration(data, prior, noise_variance=0.5, num_simulations=8, batch_size=8,
                                          num_warmup=20, num_samples=20, thin=2, key=1, progress_bar=False)
    evidence = log_evidence(data, prior, noise_variance=0.5, num_particles=8, pilot_particles=16, key=2,
                            progress_bar=False)
    fit = dl.fit(data, prior, noise_variance=dist.HalfNormal(1.0), num_warmup=20, num_samples=8, num_chains=1,
                 key=3, progress_bar=False)
    return {{"ranks": np.stack(list(sbc.ranks.values())).tolist(), "divergences": sbc.divergences.tolist(),
             "log_evidence": evidence.log_evidence, "Q": fit.draws("Q").tolist(),
             "loo_terms": fit.datatree["log_likelihood"]["Y"].values.tolist()}}

split = devices.spread(np.zeros((8, 3)), 8)
out = {{"devices": len(split.sharding.device_set), "split": run()}}
devices.batch_sharding = lambda size, axis_name="batch": None  # everything on the default device
out["one"] = run()
print(json.dumps(out))
"""


def test_padded_blocks_cover_every_row_once_and_pad_with_the_last():
    blocks = list(padded_blocks(10, 4))
    assert [(first, count) for first, count, _ in blocks] == [(0, 4), (4, 4), (8, 2)]
    np.testing.assert_array_equal(blocks[-1][2], [8, 9, 9, 9])
    real = np.concatenate([rows[:count] for _, count, rows in blocks])
    np.testing.assert_array_equal(real, np.arange(10))


@pytest.mark.device
def test_four_devices_give_the_numbers_of_one():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == DEVICES  # the batches were split over every device
    split, one = out["split"], out["one"]
    np.testing.assert_array_equal(split["ranks"], one["ranks"])
    np.testing.assert_array_equal(split["divergences"], one["divergences"])
    np.testing.assert_allclose(split["log_evidence"], one["log_evidence"], rtol=SAME_NUMBERS_TOLERANCE)
    np.testing.assert_allclose(split["Q"], one["Q"], rtol=SAME_NUMBERS_TOLERANCE, atol=SAME_NUMBERS_TOLERANCE)
    np.testing.assert_allclose(split["loo_terms"], one["loo_terms"], rtol=SAME_NUMBERS_TOLERANCE)
