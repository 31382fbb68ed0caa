"""Argument types shared by the ``deeplinear`` sub-commands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "seed", "add_cache_flag"]


def seed(text):
    """An integer seed in [0, 2**32) (argparse type)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**32), got {v}")
    return v


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_cache_flag(parser):
    """``--no-compilation-cache``: do not switch on JAX's persistent compilation cache."""
    parser.add_argument(
        "--no-compilation-cache", action="store_true",
        help="do not keep compiled programs in the user's cache folder (also: DEEPLINEAR_COMPILATION_CACHE=off; "
        "the variable may instead name the folder)",
    )
