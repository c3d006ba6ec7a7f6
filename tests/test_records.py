"""ucernvm.records.NamedTuple makes the class typing.NamedTuple makes from the same class statement."""

from __future__ import annotations

import pickle
import typing

import pytest

from ucernvm import records


class Point(records.NamedTuple):
    """A point."""

    x: int
    label: str | None = None
    tags: tuple[str, ...] = ()

    def doubled(self) -> int:
        return self.x * 2

    @property
    def named(self) -> bool:
        return self.label is not None


class TypingPoint(typing.NamedTuple):
    """A point."""

    x: int
    label: str | None = None
    tags: tuple[str, ...] = ()


class Origin(Point):
    """A subclass with its own constructor, as ContentHash checks its digest."""

    __slots__ = ()

    def __new__(cls, label: str) -> Origin:
        return tuple.__new__(cls, (0, label, ()))


def test_the_same_class_as_typing_makes() -> None:
    point = Point(3, label="a")
    assert point == TypingPoint(3, label="a") == (3, "a", ())
    assert repr(point) == "Point(x=3, label='a', tags=())"
    assert Point._fields == TypingPoint._fields and Point._field_defaults == TypingPoint._field_defaults
    assert point._replace(x=4) == Point(4, "a") and point._asdict() == {"x": 3, "label": "a", "tags": ()}
    assert Point._make([1, None, ("t",)]).tags == ("t",)
    assert point.doubled() == 6 and point.named and not Point(1).named
    assert Point.__doc__ == "A point." and Point.__module__ == __name__ and Point.__qualname__ == "Point"
    assert hash(point) == hash((3, "a", ())) and isinstance(point, tuple)
    assert pickle.loads(pickle.dumps(point)) == point
    assert typing.get_type_hints(Point) == typing.get_type_hints(TypingPoint)
    with pytest.raises(AttributeError):
        point.x = 5  # type: ignore[misc]


def test_a_subclass_keeps_its_constructor() -> None:
    origin = Origin("o")
    assert origin == (0, "o", ()) and origin.doubled() == 0 and type(origin) is Origin


def test_what_typing_refuses_is_refused() -> None:
    with pytest.raises(TypeError):
        class DefaultFirst(records.NamedTuple):
            a: int = 1
            b: int  # type: ignore[misc]

    with pytest.raises(AttributeError):
        class OwnReplace(records.NamedTuple):
            a: int

            def _replace(self) -> None:  # type: ignore[override]
                pass
