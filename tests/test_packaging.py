"""The distribution others build on: a wheel built from this source holds the typing marker, the
license and the data files, and installed in a fresh virtual environment it imports and runs its
command line (issue 29)."""

import email
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("pyproject.toml", "README.md", "LICENSE", "deeplinear")  # what a build reads


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built (no build isolation: setuptools comes from the test extra) from a copy of the
    source, so that the build writes nothing into the checkout."""
    pytest.importorskip("setuptools", minversion="77")
    src, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    built, = out.glob("deeplinear-*.whl")
    return built


def test_the_wheel_holds_the_typing_marker_license_data_and_metadata(wheel):
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
    assert "deeplinear/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    shipped = {n for n in names if n.startswith("deeplinear/data_files/")}
    assert shipped == {f"deeplinear/data_files/{p.name}" for p in (ROOT / "deeplinear" / "data_files").iterdir()
                       if p.suffix in (".csv", ".md")} and shipped
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    assert metadata["Version"] == declared["version"]
    assert metadata["License-Expression"] == "MIT"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    assert any(extra == "cuda" for extra in metadata.get_all("Provides-Extra"))


def test_the_wheel_installs_in_a_fresh_environment_and_runs(wheel, tmp_path):
    """A fresh virtual environment holding only the wheel (its dependencies are borrowed from this
    environment through a path file read after its own site-packages, so nothing is downloaded):
    ``import deeplinear`` finds the installed copy, ``__version__`` is the distribution's, and the
    console script answers ``--help``."""
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "zz_borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    probe = subprocess.run([str(python), "-c", "import deeplinear; print(deeplinear.__file__); "
                            "print(deeplinear.__version__)"], check=True, capture_output=True, text=True, cwd=tmp_path)
    where, version = probe.stdout.split()
    assert Path(where).is_relative_to(env)
    assert version == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    helped = subprocess.run([str(env / "bin" / "deeplinear"), "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert "usage: deeplinear" in helped.stdout
