"""The house: the library core apart from the application, no import cycles, a curated API,
and the rows convention for data straight from pandas."""

import ast
import dataclasses
from pathlib import Path

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import deeplinear as dl

PACKAGE = Path(dl.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph():
    """Module -> deeplinear modules it imports (at any depth of the file, lazy imports included; not
    the imports under ``if TYPE_CHECKING:``, which only type checkers read and never run)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        tree = ast.parse(path.read_text())
        for block in ast.walk(tree):
            if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING":
                block.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def test_core_never_imports_the_application():
    graph = _import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith("deeplinear.app"))
                 for m, deps in graph.items() if not m.startswith("deeplinear.app")}
    assert not {m: d for m, d in offenders.items() if d}, offenders
    assert "deeplinear.app.cli" in graph  # the walk sees the application


def test_no_import_cycles():
    graph = _import_graph()
    # a package imports its own submodules by construction; ignore parent -> child edges
    edges = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


JIT_HOMES = {"deeplinear._matmul", "deeplinear.cache"}  # the modules that may call jax.jit themselves


def test_every_program_is_compiled_at_full_matmul_precision():
    """Programs are built by ``full_precision_jit`` or ``ReusedTraceJit`` (which trace under full
    matrix-product precision, so that float32 products on a GPU are not TF32's ~3 digits); a plain
    ``jax.jit`` elsewhere in the package would escape that."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            direct = (isinstance(node, ast.Attribute) and node.attr == "jit"
                      and isinstance(node.value, ast.Name) and node.value.id == "jax")
            imported = (isinstance(node, ast.ImportFrom) and node.module == "jax"
                        and any(a.name == "jit" for a in node.names))
            if (direct or imported) and name not in JIT_HOMES:
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders
    assert len([p for p in PACKAGE.rglob("*.py") if _module_name(p) in JIT_HOMES]) == len(JIT_HOMES)


def _numpyro_imports_in_source_order(tree):
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            yield from ((node, a.name, None) for a in node.names if a.name.split(".")[0] == "numpyro")
        elif node.module and node.module.split(".")[0] == "numpyro":
            yield node, node.module, node.names


def test_numpyro_is_loaded_whole_before_its_submodules_are_imported_by_name():
    """arviz_base (imported by arviz 1.x, arviz_stats and this package) puts a lazy proxy of ``numpyro`` in
    ``sys.modules`` (lazy_loader) when NumPyro is not yet imported. ``import numpyro.distributions`` with
    that proxy standing executes ``numpyro.distributions`` twice, and the second module object lacks its
    submodules' attributes: ``numpyro.factor`` then fails (``module 'numpyro.distributions' has no
    attribute 'distribution'``; it did in a spawned refit worker, whose first import is
    ``deeplinear.crossvalidation``, which imports arviz_stats). ``from numpyro import distributions``
    loads the proxy whole first. So in each module the first import of a NumPyro submodule is of that
    form; ``import numpyro.<submodule>`` is never written."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        loaded = False
        for node, module, names in _numpyro_imports_in_source_order(ast.parse(path.read_text())):
            where = f"{_module_name(path)}:{node.lineno}"
            if names is None and module != "numpyro":
                offenders.append(f"{where} import {module}")
            elif names is not None and module == "numpyro":
                loaded = True
            elif names is not None and not loaded:
                offenders.append(f"{where} from {module} import ... before any 'from numpyro import'")
    assert not offenders, offenders


@pytest.mark.parametrize("first", ["import deeplinear.crossvalidation",  # a spawned refit worker
                                   "import arviz_base; import deeplinear.inference"])
def test_numpyro_stays_whole_whatever_is_imported_first(first):
    """In a fresh process (the import order is what is tested): every loaded ``numpyro.<a>.<b>`` is the
    attribute ``b`` of ``numpyro.<a>``, as Python's import system guarantees without lazy proxies."""
    import subprocess
    import sys

    code = (f"{first}\n"
            "import sys\n"
            "print([n for n, m in list(sys.modules.items()) if n.startswith('numpyro.') and m is not None"
            " and getattr(sys.modules.get(n.rpartition('.')[0]), n.rpartition('.')[2], None) is not m])\n"
            "print(len([n for n in sys.modules if n.startswith('numpyro.distributions.')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    broken, loaded = out.stdout.split("\n")[:2]
    assert broken == "[]"
    assert int(loaded) > 5  # NumPyro's distributions were really loaded


def test_curated_public_api():
    assert dl.__all__ == sorted(dl.__all__)
    assert len(dl.__all__) <= 25
    assert all(hasattr(dl, name) for name in dl.__all__)
    for internal in ("network_forward", "loo_log_likelihood_draws", "KernelEigenbasis", "sample_q", "TestKernel"):
        assert internal not in dl.__all__


def test_data_straight_from_a_pandas_dataframe():
    """One observation per row: DataFrame columns in, predictions (P*, D) out."""
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(12, 5)), columns=["x1", "x2", "x3", "y1", "y2"])
    train, test = df.iloc[:9], df.iloc[9:]
    data = dl.RegressionData.linear(train[["x1", "x2", "x3"]], train[["y1", "y2"]])
    assert (data.num_obs, data.num_features, data.num_outputs) == (9, 3, 2)
    np.testing.assert_allclose(np.asarray(data.labels), train[["y1", "y2"]].to_numpy(), rtol=1e-6)
    fit = dl.fit(data, dl.NNGPPrior(2), noise_variance=0.5, num_samples=4, num_chains=1)  # exact: no MCMC
    pred = fit.predict(test[["x1", "x2", "x3"]])
    assert pred.mean.shape == (3, 2) and pred.covariance().shape == (3, 2, 2)
    assert np.isfinite(float(pred.log_predictive_density(test[["y1", "y2"]])))
    assert fit.datatree["observed_data"]["Y"].dims == ("obs", "output")


def test_data_objects_are_immutable_pytrees():
    data = dl.RegressionData.linear(np.eye(4, 2), np.ones((4, 1)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.labels = None
    leaves, tree = jax.tree_util.tree_flatten(data)
    again = jax.tree_util.tree_unflatten(tree, leaves)
    assert again.num_obs == 4 and again.basis.rank == 2
    assert float(jax.jit(lambda d: d.labels.sum())(data)) == 4.0
    test = data.prediction_kernel(np.ones((3, 2)))
    assert isinstance(test, dl.PredictionKernel) and test.rotated_cross.shape == (3, 2)


def test_model_spec_is_written_down_and_read_back_one_way():
    spec = dl.ModelSpec(dl.ProportionalLimitPrior(0.5, 2, num_steps=8), lambda_star=dist.LogNormal(0.0, 0.5),
                        noise_variance=0.3, ratio=dist.Gamma(2.0, 2.0))
    again = dl.ModelSpec.from_json(spec.to_json())
    assert again.to_dict() == spec.to_dict() and again.prior == spec.prior
    assert again.inferred == ("lambda_star", "ratio") and again.noise_variance == 0.3
    finite = dl.ModelSpec.from_dict({"prior": {"kind": "finite", "depth": 3, "width": 4, "num_outputs": 2}})
    assert finite.prior == dl.FiniteWidthPrior((4, 4, 4), 2) and finite.lambda_star == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.noise_variance = 1.0
