"""Documentation: every public name documented, the API reference up to date, the README's
Python quick start runs as written (in a scratch directory, as a new user would)."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "docs"))

import make_api  # noqa: E402


def test_every_public_name_and_member_has_a_docstring():
    missing = []
    for mod, name, obj in make_api.public_names():
        if not inspect.getdoc(obj):
            missing.append(f"{mod}.{name}")
        if inspect.isclass(obj):
            for mname, member, raw in make_api.class_members(obj):
                if not make_api.member_doc(obj, mname, member, raw):
                    missing.append(f"{mod}.{name}.{mname}")
    assert not missing, missing


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


def test_api_reference_is_up_to_date():
    assert (ROOT / "docs" / "api.md").read_text() == make_api.render(), "run python docs/make_api.py"


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
