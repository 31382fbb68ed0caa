"""Describe the machine a benchmark ran on (written next to its results)."""

import os
import platform

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
    return (
        f"{cpu}; {os.cpu_count()} logical cores; Python {platform.python_version()}; "
        f"jax {jax.__version__} on {dev.platform} ({dev.device_kind}); x64={jax.config.jax_enable_x64}"
    )
