"""Test-session hygiene for every collected item (``tests/`` and the doctests in ``deeplinear/``).

Each compiled XLA CPU program holds memory mappings (about ten for a small one) until JAX's caches
drop it. A pytest-xdist worker runs hundreds of tests in one process and keeps every program it
compiled, and on Linux a process may hold at most ``vm.max_map_count`` mappings (65530 by default):
past that, the next compilation segfaults or aborts inside XLA. So when a test module ends and the
worker holds more than ``MAPPING_SHARE`` of that limit, JAX's caches are cleared (the next module
compiles afresh; nothing else changes). Clearing only between modules keeps the compile-once tests,
which count compilations within a module, meaningful.
"""

from pathlib import Path

import jax

MAPPING_SHARE = 0.5  # clear JAX's caches between modules above this share of vm.max_map_count


def _mapping_share() -> float:
    """Memory mappings this process holds, as a share of the kernel's limit (0 where unknown)."""
    try:
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
        with open("/proc/self/maps", "rb") as maps:
            held = sum(1 for _ in maps)
    except (OSError, ValueError):
        return 0.0
    return held / limit


def pytest_runtest_teardown(item, nextitem):
    if (nextitem is None or nextitem.path != item.path) and _mapping_share() > MAPPING_SHARE:
        jax.clear_caches()
