"""Work-arounds for third-party import quirks (no behaviour of ours is changed here).

``arviz_base`` registers ``numpyro`` with ``lazy_loader`` when it is imported. If a
user then runs ``import numpyro.distributions`` before NumPyro was really loaded,
Python ends up with a ``numpyro.distributions`` module whose submodule attributes
(``numpyro.distributions.distribution`` and others) are missing, and NumPyro's own
``numpyro.factor`` -- used by NUTS for every constrained latent, such as the
finite-width prior's Gamma-distributed Bartlett diagonals -- fails with
``AttributeError: module 'numpyro.distributions' has no attribute 'distribution'``.
:func:`repair_lazy_numpyro` finishes the lazy import and restores the
``parent.child`` attributes that Python's import system normally guarantees.
"""

from __future__ import annotations

import sys

__all__ = ["repair_lazy_numpyro"]


def repair_lazy_numpyro() -> None:
    """Complete a lazily loaded ``numpyro`` and restore missing submodule attributes."""
    import numpyro

    getattr(numpyro, "__version__", None)  # executes a lazy module if it is one
    for name, module in list(sys.modules.items()):
        if not name.startswith("numpyro.") or module is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = sys.modules.get(parent_name)
        if parent is not None and child not in vars(parent):
            setattr(parent, child, module)
