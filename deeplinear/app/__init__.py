"""The application layer: the ``deeplinear`` command line, the demonstration on built-in data,
CSV/NPY reading and the prior-law experiments of notebooks 01-02.

It builds on the library (``import deeplinear``) and the library never imports it.

* :mod:`deeplinear.app.cli` -- the program (``main(argv)`` returns the exit code);
* :mod:`deeplinear.app.fit` -- ``deeplinear fit`` / ``deeplinear compare`` on users' files;
* :mod:`deeplinear.app.demo` -- the inference story on the Linnerud data;
* :mod:`deeplinear.app.prior_laws` -- prior laws against theory (``deeplinear simulate``);
* :mod:`deeplinear.app.tables` -- reading tables, standardizing columns;
* :mod:`deeplinear.app.figures` -- the figures of the demo and of the prior-law experiments.
"""
