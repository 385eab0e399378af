"""``PruneConfig``: which method, how many tokens, and the method's options; validated, hashable, canonical.

The canonical form (``to_dict``: all defaults filled, options sorted) is part of the adapter's settings, whose
JSON goes into vLLM's multimodal hash, so two requests that would select different tokens never share an
encoder-cache entry.

Two stages: ``{"method": "vcast", "retention": 0.5, "pre_tower": {"method": "novelty", "retention": 0.5}}``
first keeps ``B1 = total_budget(grid, pre_tower)`` merge groups chosen from the pixels (the tower runs on those
only), then the post-tower method keeps ``B2 = two_stage_budget(B1, T, cfg)`` of them (``selection.stage_budgets``).
The pre-tower config's ``min_tokens_per_slice`` defaults to the top-level one and may not be smaller, so every
slice reaches the post-tower stage with at least the post-tower floor. ``pre_tower`` appears in the canonical form
only when set, so single-stage configs keep their canonical form (and hash).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .options import finite_number, short_name, short_repr
from .registry import get_method

_KEYS = ("method", "min_tokens_per_slice", "options", "pre_tower", "retention")


@dataclass(frozen=True)
class PruneConfig:
    """Video-token selection settings for one video.

    method: registry name ("none", "evs", "mssavt", "stc", "vcast", or a registered custom method).
    retention: fraction of the video's tokens kept, in (0, 1]; each method states its exact rounding.
    min_tokens_per_slice: floor per temporal slice (V-CAST's ``min_k``), >= 0.
    options: the method's options as sorted ``(name, value)`` pairs with every default filled in; a mapping or a
        partial list is accepted and canonicalised, so ``PruneConfig(method="stc")`` equals
        ``PruneConfig.from_dict({"method": "stc"})``.
    pre_tower: the stage run on pixels before the vision tower (a config of a ``pre_tower`` method), or None.
        A config whose own method is a pre-tower method is the pre-tower stage itself (``select_pretower``).
    """

    method: str = "none"
    retention: float = 1.0
    min_tokens_per_slice: int = 1
    options: tuple[tuple[str, Any], ...] = ()
    pre_tower: PruneConfig | None = None

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
        if self.pre_tower is not None:
            self._check_pre_tower(method.stage)

    def _check_pre_tower(self, stage: str) -> None:
        pre = self.pre_tower
        if not isinstance(pre, PruneConfig):
            raise ValueError(f"vtprune.pre_tower must be a mapping of pre-tower settings, got {short_repr(pre)}")
        if stage != "post_tower":
            raise ValueError(
                f"vtprune.method {self.method!r} runs before the tower; with vtprune.pre_tower set, "
                "vtprune.method must be a post-tower method"
            )
        pre_stage = get_method(pre.method).stage
        if pre_stage != "pre_tower" or pre.pre_tower is not None:
            raise ValueError(
                f"vtprune.pre_tower.method must be a pre-tower method without its own pre_tower, got {pre.method!r}"
            )
        if pre.min_tokens_per_slice < self.min_tokens_per_slice:
            raise ValueError(
                f"vtprune.pre_tower.min_tokens_per_slice={pre.min_tokens_per_slice} is below "
                f"vtprune.min_tokens_per_slice={self.min_tokens_per_slice}: a slice could reach the post-tower "
                "stage with fewer groups than its floor"
            )

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
        pre_tower = d.get("pre_tower")
        if pre_tower is not None:
            if not isinstance(pre_tower, Mapping):
                raise ValueError(
                    f"vtprune.pre_tower must be a mapping of pre-tower settings, got {short_repr(pre_tower)}")
            if "pre_tower" in pre_tower:
                raise ValueError("vtprune.pre_tower cannot have its own pre_tower")
            inherited = {"min_tokens_per_slice": d["min_tokens_per_slice"]} if "min_tokens_per_slice" in d else {}
            pre_tower = cls.from_dict({**inherited, **pre_tower})
        rest = {k: v for k, v in d.items() if k not in ("options", "pre_tower")}
        return cls(**rest, options=tuple(options.items()), pre_tower=pre_tower)

    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-serialisable form with every default filled; ``from_dict(to_dict(c)) == c``."""
        d = {
            "method": self.method,
            "retention": self.retention,
            "min_tokens_per_slice": self.min_tokens_per_slice,
            "options": dict(self.options),
        }
        if self.pre_tower is not None:
            d["pre_tower"] = self.pre_tower.to_dict()
        return d

    @property
    def stateful(self) -> bool:
        """Whether selection under this config follows a stream's history (see ``PruningMethod``)."""
        return get_method(self.method).uses_stream_state(self)
