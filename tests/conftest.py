import os

import jax
import jax.numpy as jnp
import pytest

# The command line switches on JAX's persistent compilation cache in the user's cache folder;
# the tests (in-process runs of main() and subprocesses alike) leave the user's folders alone.
os.environ["DEEPLINEAR_COMPILATION_CACHE"] = "off"


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Run the test in both precisions; float64 through a scoped ``jax.enable_x64``."""
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)


def mc_mean_and_se(samples, axis=0):
    """Sample mean and its Monte Carlo standard error along ``axis``."""
    import numpy as np

    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[axis]
    return x.mean(axis), x.std(axis, ddof=1) / np.sqrt(n)
