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

(Python executes ``numpyro.distributions`` twice there: importing a submodule reads the lazy parent's
``__path__``, which loads the parent, which imports the submodule; the import then loads it again, and
the second module object gets no attribute for its already-loaded submodules.) This package's own
modules never start it: the first NumPyro submodule each imports comes through ``from numpyro import``,
which loads a lazy proxy whole first (``tests/test_layout.py`` checks the import statements, and a
spawned process whose first import is ``deeplinear.crossvalidation`` -- a refit worker, which imports
``arviz_stats`` before NumPyro). The repair is for a user's own ``import numpyro.distributions`` made
after ``import arviz`` and before this package's first use.
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
