"""JAX's persistent compilation cache, switched on only when asked (importing deeplinear never does).

Compiling the sampler is most of a small fit's time (issue 13 measured 65-86%). JAX can keep
compiled programs on disk and load them in later runs and processes instead of compiling again;
that is a JAX-wide setting, so deeplinear leaves it alone unless you call
:func:`enable_compilation_cache` (the ``deeplinear`` command line does, in your cache folder,
unless given ``--no-compilation-cache`` or ``DEEPLINEAR_COMPILATION_CACHE=off``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["enable_compilation_cache", "default_cache_directory"]

ENVIRONMENT_VARIABLE = "DEEPLINEAR_COMPILATION_CACHE"  # a folder, or "off"


def default_cache_directory() -> Path:
    """``$XDG_CACHE_HOME/deeplinear/jax`` (``~/.cache/deeplinear/jax``; ``%LOCALAPPDATA%`` on Windows,
    ``~/Library/Caches`` on macOS)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "deeplinear" / "jax"


OFF_WORDS = ("off", "0", "no", "false")  # values of ENVIRONMENT_VARIABLE that switch the cache off


def enable_compilation_cache(directory=None, *, min_compile_time_secs: float = 0.0) -> Path | None:
    """Switch on JAX's persistent compilation cache in ``directory``; returns the folder.

    ``directory`` defaults to the folder named by ``$DEEPLINEAR_COMPILATION_CACHE`` if set,
    else :func:`default_cache_directory` (``~/.cache/deeplinear/jax``). Setting that variable
    to ``off`` makes a call without ``directory`` do nothing (and return ``None``): the way to
    keep notebooks and scripts that call this from writing to your cache folder.

    This changes JAX's global configuration for the whole process (``jax_compilation_cache_dir``
    and ``jax_persistent_cache_min_compile_time_secs``): programs that took at least
    ``min_compile_time_secs`` to compile are stored and, in later runs, loaded instead of compiled
    (the default 0 stores every program: a fit compiles dozens of small ones besides the
    sampler). Results are unchanged. What it costs on disk: about 1-3 MB per model structure
    (the quick start's fit stores about 2 MB in 30 files); JAX never removes entries, so remove
    the folder to clear it.

    Examples
    --------
    >>> import tempfile, deeplinear as dl
    >>> folder = dl.enable_compilation_cache(tempfile.mkdtemp())  # doctest: +SKIP
    """
    import jax

    from deeplinear._validation import check_positive_scalar

    check_positive_scalar("min_compile_time_secs", min_compile_time_secs, allow_zero=True)
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a folder path, got {directory!r}")
    if directory is None:
        setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
        if setting.lower() in OFF_WORDS:
            return None
        directory = setting or None
    folder = Path(directory) if directory is not None else default_cache_directory()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, not a folder for the compilation cache")
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
    return folder
