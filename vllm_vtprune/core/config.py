"""``PruneConfig``: which method, how many tokens, and the method's options; validated, hashable, canonical.

The canonical form (all defaults filled, options sorted) goes into vLLM's multimodal hash through ``digest()``,
so two requests that would select different tokens never share an encoder-cache entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .options import finite_number, short_name, short_repr
from .registry import get_method

_KEYS = ("method", "min_tokens_per_slice", "options", "retention")


@dataclass(frozen=True)
class PruneConfig:
    """Video-token selection settings for one video.

    method: registry name ("none", "evs", "mssavt", "stc", "vcast", or a registered custom method).
    retention: fraction of the video's tokens kept, in (0, 1]; each method states its exact rounding.
    min_tokens_per_slice: floor per temporal slice (V-CAST's ``min_k``), >= 0.
    options: the method's options as sorted ``(name, value)`` pairs with every default filled in; a mapping or a
        partial list is accepted and canonicalised, so ``PruneConfig(method="stc")`` equals
        ``PruneConfig.from_dict({"method": "stc"})``.
    """

    method: str = "none"
    retention: float = 1.0
    min_tokens_per_slice: int = 1
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ValueError(f"vtprune.method must be a string, got {short_repr(self.method)}")
        method = get_method(self.method)
        retention = finite_number(self.retention)
        if retention is None:
            raise ValueError(f"vtprune.retention must be a number in (0, 1], got {short_repr(self.retention)}")
        if not 0.0 < retention <= 1.0:
            raise ValueError(f"vtprune.retention must be in (0, 1], got {short_repr(self.retention)}")
        min_k = self.min_tokens_per_slice
        if isinstance(min_k, bool) or not isinstance(min_k, int) or min_k < 0:
            raise ValueError(f"vtprune.min_tokens_per_slice must be an integer >= 0, got {short_repr(min_k)}")
        try:
            options = dict(self.options)
        except (TypeError, ValueError):
            raise ValueError(
                f"vtprune.options must be a mapping of option names to values, got {short_repr(self.options)}"
            ) from None
        object.__setattr__(self, "retention", retention)
        object.__setattr__(self, "options", method.Options.parse(self.method, options).items())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PruneConfig:
        """Build from JSON-like settings, e.g. ``{"method": "vcast", "retention": 0.25}``; ValueError on bad input."""
        if not isinstance(d, Mapping):
            raise ValueError(f"vtprune settings must be a mapping, got {short_repr(d)}")
        for key in sorted(d, key=str):
            if key not in _KEYS:
                raise ValueError(f"vtprune.{short_name(key)} is not a known key; choose from {list(_KEYS)}")
        options = d.get("options", {})
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"vtprune.options must be a mapping of option names to values, got {short_repr(options)}")
        return cls(**{k: v for k, v in d.items() if k != "options"}, options=tuple(options.items()))

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-serialisable form with every default filled; ``from_dict(to_dict(c)) == c``."""
        return {
            "method": self.method,
            "retention": self.retention,
            "min_tokens_per_slice": self.min_tokens_per_slice,
            "options": dict(self.options),
        }

    def digest(self) -> str:
        """Stable 16-hex-digit hash of the canonical JSON (same value in every process and on every machine)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def stateful(self) -> bool:
        """Whether selection under this config follows a stream's history (see ``PruningMethod``)."""
        return get_method(self.method).uses_stream_state(self)

    def option(self, name: str) -> Any:
        """Value of one method option; KeyError naming the method's options otherwise."""
        for key, value in self.options:
            if key == name:
                return value
        raise KeyError(f"method {self.method!r} has no option {name!r}; it has {[k for k, _ in self.options]}")
