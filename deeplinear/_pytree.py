"""Frozen dataclasses registered as JAX pytrees.

``@pytree_dataclass`` makes a class a ``dataclasses.dataclass(frozen=True)`` and registers it
with JAX: fields marked ``static_field()`` are static metadata (hashable; part of the tree
structure, so a change recompiles), all other fields are leaves (arrays, or values that may be
traced). Unflattening bypasses ``__init__``/``__post_init__`` -- JAX rebuilds pytrees with
tracers, ``None`` or sentinel objects as leaves (``vmap``'s axis specs, ``tree.map``), which
argument validation must not see (JAX's documented advice for custom pytrees). Validation runs
once, when users construct the object. ``replace`` is :func:`dataclasses.replace` (validated
again).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import jax

__all__ = ["pytree_dataclass", "static_field"]


def _replace[T](self: T, **changes: Any) -> T:
    """A copy with some fields replaced (validated like a new object)."""
    return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is static pytree metadata (not a leaf)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


@typing.dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, static_field))
def pytree_dataclass(cls=None, *, eq: bool = True):
    """Decorator: a frozen dataclass registered as a pytree (see the module docstring)."""

    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True, eq=eq)(cls)
        fields = dataclasses.fields(cls)
        meta = tuple(f.name for f in fields if f.metadata.get("static"))
        data = tuple(f.name for f in fields if not f.metadata.get("static"))

        def flatten_with_keys(obj):
            children = tuple((jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data)
            return children, tuple(getattr(obj, n) for n in meta)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for n, v in zip(meta, aux):
                object.__setattr__(obj, n, v)
            for n, v in zip(data, children):
                object.__setattr__(obj, n, v)
            return obj

        def flatten(obj):
            return tuple(getattr(obj, n) for n in data), tuple(getattr(obj, n) for n in meta)

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        cls.replace = _replace
        return cls

    return wrap if cls is None else wrap(cls)
