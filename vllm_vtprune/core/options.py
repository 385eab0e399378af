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
from typing import Any, Literal, get_args, get_origin, get_type_hints

OPTION_PREFIX = "vtprune.options."


def option_error(name: str, message: str) -> ValueError:
    return ValueError(f"{OPTION_PREFIX}{name} {message}")


def _coerce(name: str, hint: Any, value: Any) -> Any:
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if any(type(value) is type(c) and value == c for c in choices):
            return value
        shown = sorted(choices) if all(isinstance(c, str) for c in choices) else list(choices)
        raise option_error(name, f"must be one of {shown}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise option_error(name, f"must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise option_error(name, f"must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise option_error(name, f"must be a finite number, got {value!r}")
    raise TypeError(f"option {name!r} has unsupported type {hint!r}")  # a bug in a method's Options class


@dataclass(frozen=True)
class MethodOptions:
    """Options of a method without any; subclasses add fields and override ``validate``."""

    @classmethod
    def parse(cls, method: str, given: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> MethodOptions:
        """Validate user-given options (missing ones take their defaults)."""
        given = dict(given)
        hints = get_type_hints(cls)
        names = sorted(f.name for f in fields(cls))
        for key in sorted(given):
            if key not in hints:
                choices = f"choose from {names}" if names else "it takes no options"
                raise option_error(str(key), f"is not an option of method {method!r}; {choices}")
        options = cls(**{key: _coerce(key, hints[key], value) for key, value in given.items()})
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ``option_error(name, ...)`` for values out of range."""

    def items(self) -> tuple[tuple[str, Any], ...]:
        """All options as sorted ``(name, value)`` pairs (the canonical, hashable form)."""
        return tuple(sorted((f.name, getattr(self, f.name)) for f in fields(self)))
