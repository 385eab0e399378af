"""``CacherConfig``: STC-Cacher settings (per request or server-wide), validated, JSON round-trippable.

No vLLM or torch import: safe for the API-server side that parses settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm_vtprune.core.options import finite_number, short_name, short_repr

PREFIX = "vtprune.cacher."
_KEYS = ("enabled", "recompute_ratio", "refresh_interval")


def _err(key: str, message: str) -> ValueError:
    return ValueError(f"{PREFIX}{key} {message}")


@dataclass(frozen=True)
class CacherConfig:
    """STC-Cacher inside the vision tower.

    - ``enabled``: run non-reference slices with selective recomputation.
    - ``recompute_ratio``: STC's ``update_token_ratio``, in (0, 1]: the fraction of tokens per non-reference
      slice recomputed at each layer (the ones whose keys moved most). Released default 0.25.
    - ``refresh_interval``: STC's ``cache_interval``, >= 1: slice ``t`` of a video is a full-compute reference
      when ``t % refresh_interval == 0``. Released default 2. ``1`` makes every slice a reference (exact).
    """

    enabled: bool = False
    recompute_ratio: float = 0.25
    refresh_interval: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise _err("enabled", f"must be true or false, got {short_repr(self.enabled)}")
        r = finite_number(self.recompute_ratio)
        if r is None:
            raise _err("recompute_ratio", f"must be a number in (0, 1], got {short_repr(self.recompute_ratio)}")
        if not 0.0 < r <= 1.0:
            raise _err("recompute_ratio", f"must be in (0, 1], got {short_repr(self.recompute_ratio)}")
        object.__setattr__(self, "recompute_ratio", r)
        k = self.refresh_interval
        if isinstance(k, bool) or not isinstance(k, int):
            raise _err("refresh_interval", f"must be an integer >= 1, got {short_repr(k)}")
        if k < 1:
            raise _err("refresh_interval", f"must be >= 1, got {k!r}")

    @property
    def active(self) -> bool:
        """Whether any slice takes the approximate path. ``recompute_ratio == 1`` or ``refresh_interval == 1``
        is exact by definition, so those run the stock full forward (bit-identical to the stock tower)."""
        return self.enabled and self.recompute_ratio < 1.0 and self.refresh_interval > 1

    @property
    def tower_cost(self) -> float:
        """Share of the tower's work this config computes, 1 when exact: references in full, the other slices at
        ``recompute_ratio`` (what the lower-cost request policy compares)."""
        if not self.active:
            return 1.0
        # = (1 + (k - 1) * ratio) / k; int / int division, so a huge interval from a client cannot overflow
        return self.recompute_ratio + (1 - self.recompute_ratio) * (1 / self.refresh_interval)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> CacherConfig:
        """From JSON-like settings, e.g. ``{"enabled": true, "recompute_ratio": 0.25}``; missing keys take
        defaults. ValueError naming the key on an unknown key or a bad value."""
        if d is None:
            return cls()
        if isinstance(d, CacherConfig):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"vtprune.cacher must be a mapping, got {short_repr(d)}")  # noqa: TRY004 - settings errors are ValueError
        for key in sorted(d, key=str):
            if key not in _KEYS:
                raise ValueError(f"{PREFIX}{short_name(key)} is not a known key; choose from {list(_KEYS)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Canonical form with every default filled; ``from_dict(to_dict(c)) == c``."""
        return {
            "enabled": self.enabled,
            "recompute_ratio": self.recompute_ratio,
            "refresh_interval": self.refresh_interval,
        }
