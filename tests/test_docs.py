"""Documentation: every public name documented and in the API reference, the Sphinx site builds
with warnings as errors, the README's Python quick start runs as written (in a scratch directory,
as a new user would)."""

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
# the modules whose __all__ users import from (the top level re-exports the most used names)
MODULES = [
    "deeplinear", "deeplinear.moments", "deeplinear.data", "deeplinear.likelihood", "deeplinear.predictive",
    "deeplinear.inference", "deeplinear.custom", "deeplinear.comparison", "deeplinear.crossvalidation",
    "deeplinear.exact", "deeplinear.evidence", "deeplinear.renormalized", "deeplinear.sbc", "deeplinear.sweep",
    "deeplinear.plotting", "deeplinear.datasets", "deeplinear.cache", "deeplinear.app.prior_laws",
]
SITE_SECONDS = 60  # the build's budget, by the issue (not asserted: tests do not time)


def _public_names():
    """``(module name, name, object)`` for every public name, without repeats."""
    seen = set()
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name in sorted(getattr(mod, "__all__", [])):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield mod_name, name, obj


def _class_members(cls):
    """Public methods and properties defined in deeplinear (not a NamedTuple's fields or tuple's methods)."""
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in getattr(cls, "_fields", ()):
            continue
        if name in {"count", "index"} and issubclass(cls, tuple):
            continue
        raw = inspect.getattr_static(cls, name)
        func = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
        if inspect.isfunction(func) and func.__module__.startswith("deeplinear"):
            yield name, (raw.fget if isinstance(raw, property) else member)


def test_every_public_name_and_member_has_a_docstring():
    missing = []
    for mod, name, obj in _public_names():
        if not inspect.getdoc(obj):
            missing.append(f"{mod}.{name}")
        if inspect.isclass(obj):
            missing += [f"{mod}.{name}.{m}" for m, member in _class_members(obj) if not inspect.getdoc(member)]
    assert not missing, missing


def _unannotated(func) -> list[str]:
    """The parameters (and ``return``) of ``func`` that have no type annotation."""
    sig = inspect.signature(func)
    missing = [p.name for p in sig.parameters.values()
               if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    return missing + (["return"] if sig.return_annotation is inspect.Signature.empty else [])


def test_every_public_function_and_method_is_fully_annotated():
    """The package ships ``py.typed``, so type checkers read its signatures: every public function,
    method, property and constructor annotates each parameter and its return."""
    missing = []
    for mod, name, obj in _public_names():
        members = [(name, obj)] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            members += [(f"{name}.{m}", member) for m, member in _class_members(obj)]
            init = inspect.getattr_static(obj, "__init__")
            if inspect.isfunction(init) and init.__module__.startswith("deeplinear"):
                members.append((f"{name}.__init__", init))
        missing += [f"{mod}.{label}: {', '.join(gaps)}" for label, func in members if (gaps := _unannotated(func))]
    assert not missing, missing


def _api_targets() -> dict:
    """``{object id: directive target}`` of every ``.. auto*::`` directive of the API pages."""
    targets = {}
    for page in sorted((ROOT / "docs" / "api").glob("*.rst")):
        for target in re.findall(r"^\.\. auto\w+:: (\S+)$", page.read_text(), flags=re.M):
            module, _, name = target.rpartition(".")
            targets[id(getattr(importlib.import_module(module), name))] = target
    return targets


def test_every_public_name_is_in_the_api_reference():
    """The API pages (grouped by concept, written by hand) leave no public name out."""
    targets = _api_targets()
    left_out = [f"{mod}.{name}" for mod, name, obj in _public_names() if id(obj) not in targets]
    assert not left_out, f"add these to a page of docs/api/: {left_out}"


def test_documentation_site_builds_with_warnings_as_errors(tmp_path):
    """``sphinx-build -W`` of the whole site (guides, API pages from the docstrings, the notebooks with
    their committed outputs, nothing executed)."""
    pytest.importorskip("myst_nb", reason="the docs extra (pip install -e '.[docs]') builds the site")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-c", "docs", ".", str(tmp_path / "html"),
         "-d", str(tmp_path / "doctrees")], cwd=ROOT, capture_output=True, text=True, timeout=10 * SITE_SECONDS)
    assert out.returncode == 0, out.stderr[-5000:]
    api = (tmp_path / "html" / "docs" / "api" / "models.html").read_text()
    assert "deeplinear.fit" in api and "\\(" in api  # the docstrings' :math: as MathJax input
    assert (tmp_path / "html" / "_static" / "mathjax").is_dir()  # served with the site, no CDN
    assert (tmp_path / "html" / "notebooks" / "04_linnerud.html").exists()


def test_no_string_in_the_package_holds_a_control_character():
    """A formula such as ``\\tilde``, ``\\bar`` or ``\\varepsilon`` in a docstring that is not a raw
    string becomes a tab, backspace or vertical tab: the rendered math is garbled."""
    import ast

    bad = []
    for path in sorted((ROOT / "deeplinear").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(c in node.value for c in "\t\x0b\x0c\x07\x08\r"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"use a raw docstring (r\"\"\"...) at {bad}"


def test_readme_quick_start_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    quick = blocks[0]
    assert len(quick.strip().splitlines()) <= 22  # the "20-line" quick start stays short
    (tmp_path / "limit.nc").write_bytes(b"left by an earlier run")  # the quick start runs twice in a row
    for i, code in enumerate(blocks):
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        if i == 0:  # the comparison table is printed whole: no column hidden behind pandas' "..."
            assert "max_pareto_k" in out.stdout and "heldout_lpd" in out.stdout, out.stdout[-3000:]
    assert (tmp_path / "limit.nc").read_bytes()[:4] == b"\x89HDF"  # replaced by the fit (netCDF-4 is HDF5)
