"""Generate docs/api.md, the API reference, from the docstrings of every public name.

    python docs/make_api.py          # rewrite docs/api.md
    python docs/make_api.py --check  # exit 1 if docs/api.md is out of date (run by the tests)

Public names: ``deeplinear.__all__`` plus the ``__all__`` of the modules users import
directly (see ``MODULES``). Classes list their public methods and properties.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

MODULES = [
    "deeplinear",
    "deeplinear.moments",
    "deeplinear.data",
    "deeplinear.likelihood",
    "deeplinear.predictive",
    "deeplinear.inference",
    "deeplinear.custom",
    "deeplinear.comparison",
    "deeplinear.crossvalidation",
    "deeplinear.exact",
    "deeplinear.evidence",
    "deeplinear.renormalized",
    "deeplinear.sbc",
    "deeplinear.sweep",
    "deeplinear.plotting",
    "deeplinear.datasets",
    "deeplinear.cache",
    "deeplinear.app.prior_laws",
]
OUT = Path(__file__).with_name("api.md")


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__) if obj.__doc__ else ""


def public_names():
    """``(module name, name, object)`` for every documented public name, without repeats."""
    seen = set()
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name in sorted(getattr(mod, "__all__", [])):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield mod_name, name, obj


def class_members(cls):
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or name in getattr(cls, "_fields", ()):
            continue
        if name in {"count", "index"} and issubclass(cls, tuple):  # NamedTuple's inherited methods
            continue
        raw = inspect.getattr_static(cls, name)
        func = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
        if inspect.isfunction(func) and func.__module__.startswith("deeplinear"):
            yield name, member, raw


def member_doc(cls, name, member, raw) -> str:
    """The member's docstring, inherited from a deeplinear base class if it has none."""
    doc = inspect.getdoc(raw.fget if isinstance(raw, property) else member)
    return doc or ""


def render() -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings by `docs/make_api.py` (do not edit by hand; the tests check",
        "that it is up to date). Formulas are in LaTeX as in the docstrings; the derivations are in",
        "[theory.md](theory.md).",
        "",
    ]
    current = None
    for mod_name, name, obj in public_names():
        if mod_name != current:
            lines += [f"## `{mod_name}`", ""]
            current = mod_name
        kind = "class" if inspect.isclass(obj) else "function"
        lines += [f"### `{name}{_signature(obj)}`", "", f"*{kind}* in `{obj.__module__}`", "", _doc(obj), ""]
        if inspect.isclass(obj):
            for mname, member, raw in class_members(obj):
                doc = member_doc(obj, mname, member, raw)
                sig = "" if isinstance(raw, property) else _signature(member)
                lines += [f"#### `{name}.{mname}{sig}`", "", doc, ""]
    return "\n".join(lines).rstrip() + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print("docs/api.md is out of date: run python docs/make_api.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
