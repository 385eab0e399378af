"""Base class for a method's options: defaults, type checks from the annotations, and error messages.

A method declares its options as a frozen dataclass whose fields are ``bool``, ``int``, ``float`` or a
``Literal[...]`` of allowed values, and adds range checks in ``validate``. Values must be JSON scalars so that a
config is hashable and serialisable. Every error is a ValueError naming the key, e.g.
``vtprune.options.temporal must be one of ['dtd', 'dycoke', 'evs', 'none'], got 'foo'``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

OPTION_PREFIX = "vtprune.options."


def option_error(name: str, message: str) -> ValueError:
    return ValueError(f"{OPTION_PREFIX}{name} {message}")


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, or None for anything else (bools, strings, NaN, infinities, and integers too
    large for a float, which would otherwise escape as OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def short_repr(value: Any, limit: int = 40) -> str:
    """A value for an error message, cut short (a client may send megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def short_name(key: Any, limit: int = 40) -> str:
    """A client's key for an error message, cut short."""
    text = str(key)
    return text if len(text) <= limit else text[:limit] + "..."


def _coerce(name: str, hint: Any, value: Any) -> Any:
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if any(type(value) is type(c) and value == c for c in choices):
            return value
        shown = sorted(choices) if all(isinstance(c, str) for c in choices) else list(choices)
        raise option_error(name, f"must be one of {shown}, got {short_repr(value)}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise option_error(name, f"must be true or false, got {short_repr(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise option_error(name, f"must be an integer, got {short_repr(value)}")
    if hint is float:
        number = finite_number(value)
        if number is not None:
            return number
        raise option_error(name, f"must be a finite number, got {short_repr(value)}")
    raise TypeError(f"option {name!r} has unsupported type {hint!r}")  # a bug in a method's Options class


@dataclass(frozen=True)
class MethodOptions:
    """Options of a method without any; subclasses add fields and override ``validate``."""

    # Option values that make selection cost more than the defaults (a server may refuse them per request).
    COSTLY: ClassVar[dict[str, tuple[Any, ...]]] = {}

    @classmethod
    def parse(cls, method: str, given: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> MethodOptions:
        """Validate user-given options (missing ones take their defaults)."""
        given = dict(given)
        hints = get_type_hints(cls)
        names = sorted(f.name for f in fields(cls))
        for key in sorted(given):
            if key not in hints:
                choices = f"choose from {names}" if names else "it takes no options"
                raise option_error(short_name(key), f"is not an option of method {method!r}; {choices}")
        options = cls(**{key: _coerce(key, hints[key], value) for key, value in given.items()})
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ``option_error(name, ...)`` for values out of range."""

    def costly(self) -> dict[str, Any]:
        """The options set to a value listed in ``COSTLY``."""
        return {name: getattr(self, name) for name, values in self.COSTLY.items() if getattr(self, name) in values}

    def items(self) -> tuple[tuple[str, Any], ...]:
        """All options as sorted ``(name, value)`` pairs (the canonical, hashable form)."""
        return tuple(sorted((f.name, getattr(self, f.name)) for f in fields(self)))
