"""Argument checks shared by the layer files: plain Python values in, clear errors out."""

from __future__ import annotations

__all__ = ["check_int", "to_pair"]


def to_pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints (height, width); an int is used for both.

    Raises:
        TypeError: not an int or a pair of ints (booleans included).
        ValueError: a value below 1.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")
    if min(value) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return int(value[0]), int(value[1])


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` itself when it is an int (not a boolean) of at least ``minimum``.

    Raises:
        TypeError: not an int.
        ValueError: below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
