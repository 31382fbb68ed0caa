r"""Batched work split over the local devices, and the padded blocks it moves in.

A fit's chains (``chain_method="parallel"``), SBC's simulations, the evidence's particles and the
blocks of posterior draws (their constrained values, the default groups' LOO terms and label
replicates) are each computed by one program ``vmap``-ed over a leading batch axis. With several
local devices (GPUs, or CPU host devices), :func:`spread` places that axis split over
:math:`\gcd(\text{size}, \text{devices})` of them before the call, and ``jit`` partitions the program
along it: each device computes its share of the batch, element by element as one device would, and
nothing is exchanged until the host gathers the results. With one device (or a size no device count
divides) the arrays go to the default device as before. ``tests/test_devices.py`` checks, with four
host devices, that SBC, the evidence and a fit's draws and LOO terms give one device's numbers.

The host loops take the work in blocks of a fixed number of rows (:func:`padded_blocks`), the last one
padded with copies of its last row, so that one program serves every number of draws or particles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np

__all__ = ["batch_sharding", "default_device", "default_platform_devices", "padded_blocks", "spread"]


def default_platform_devices() -> list:
    """The local devices of the platform where JAX puts an uncommitted array: that of
    ``jax_default_device`` (a device, or a platform's name such as ``"cpu"``, which on a GPU machine
    chooses the CPU), else the default backend's."""
    chosen = jax.config.jax_default_device
    return jax.local_devices(backend=chosen if chosen is None or isinstance(chosen, str) else chosen.platform)


def default_device():
    """Where JAX puts an uncommitted array: ``jax_default_device`` when it names a device, else the
    first of :func:`default_platform_devices`."""
    chosen = jax.config.jax_default_device
    return default_platform_devices()[0] if chosen is None or isinstance(chosen, str) else chosen


def batch_sharding(size: int, axis_name: str = "batch") -> jax.sharding.NamedSharding | None:
    """A sharding of a leading axis of ``size`` over the first ``gcd(size, local devices)`` local devices
    of the default device's platform (``jax.default_device`` may choose the CPU on a GPU machine), or
    ``None`` when that is one device."""
    devices = default_platform_devices()
    n = math.gcd(int(size), len(devices))
    if n < 2:
        return None
    mesh = jax.sharding.Mesh(np.array(devices[:n]), (axis_name,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))


def spread(tree, size: int):
    """Every array of ``tree`` (leading axis ``size``; ``None`` entries stay ``None``) put on the devices:
    split along that axis by :func:`batch_sharding`, or on the default device when it gives none."""
    sharding = batch_sharding(size)
    return jax.tree.map(jax.device_put if sharding is None else (lambda a: jax.device_put(a, sharding)), tree)


def padded_blocks(n: int, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(first, count, rows)`` for the blocks of ``size`` rows over ``n`` rows: ``rows`` indexes rows
    ``first .. first + size - 1``, those past the end repeating row ``n - 1`` (padding whose results the
    caller drops: only the first ``count`` are real)."""
    for first in range(0, n, size):
        yield first, min(size, n - first), np.minimum(np.arange(first, first + size), n - 1)
