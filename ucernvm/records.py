"""``NamedTuple`` for the boot's records, built without typing's checks of their annotations.

``typing.NamedTuple`` turns every annotation into a checked type; with postponed annotations (every
module here) that is a ``ForwardRef`` per field, which compiles the annotation's text. The boot's PID 1
defines some fifty record classes, and under TCG the checks were half of their cost (50 classes:
87 ms against 35 ms, emulated). This metaclass makes the same class from the same class statement
with ``collections.namedtuple``: fields in order, defaults, methods, docstring, the annotations as
written. Type checkers see ``typing.NamedTuple`` itself.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import NamedTuple
else:
    # What typing.NamedTuple refuses to take from the class body, and what it does not copy.
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                             "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__", "__qualname__", "__orig_bases__"})

    class _NamedTupleMeta(type):
        def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
            if not bases:  # the base class below
                return super().__new__(mcls, name, bases, namespace)
            annotations = namespace.get("__annotations__", {})
            fields = list(annotations)
            with_default = [field for field in fields if field in namespace]
            if with_default and fields[-len(with_default):] != with_default:
                raise TypeError(f"{name}: a field without a default follows {', '.join(with_default)}")
            defaults = [namespace[field] for field in with_default]
            record = collections.namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            record.__annotations__ = dict(annotations)
            record.__qualname__ = namespace.get("__qualname__", name)
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in record._fields:
                    setattr(record, key, value)
            return record

    class NamedTuple(metaclass=_NamedTupleMeta):
        """Subclass as ``typing.NamedTuple``: ``class Point(NamedTuple): x: int; y: int = 0``."""

__all__ = ["NamedTuple"]
