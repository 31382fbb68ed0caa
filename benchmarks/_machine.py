"""Shared by the benchmarks: describe the machine (written next to the results), time a jitted call."""

import os
import platform
import time

import jax


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}; {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}); x64={jax.config.jax_enable_x64}; "
        f"load average (1, 5, 15 min) when this line was written: {load}"
    )


def best_time(fn, *args, repeats: int = 3) -> float:
    """Best wall time of ``fn(*args)`` over ``repeats`` runs, after one compile/warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times)
