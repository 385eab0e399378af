"""The plugin's configuration: parsed once, validated, and carried to every process vLLM starts.

Server-wide settings come from ``--plugin vtprune --vtprune-*`` (or ``additional_config={"vtprune": ...}``)
and travel as JSON in ``VLLM_VTPRUNE_CONFIG``: spawned engine-core and worker processes inherit it, and
vLLM's Ray executor copies every ``VLLM_*`` variable to its workers. A request may override them through
``mm_processor_kwargs={"vtprune": {...}}``; :func:`VtpruneSettings.merged` applies such an override.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from vllm_vtprune.core import PruneConfig
from vllm_vtprune.vision.cacher_config import CacherConfig

ENV_VAR = "VLLM_VTPRUNE_CONFIG"
REQUEST_KEY = "vtprune"  # key inside mm_processor_kwargs


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vllm_vtprune.configs").iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ValueError(f"vtprune preset {name!r} is unknown; choose one of {preset_names()}")
    return json.loads(resources.files("vllm_vtprune.configs").joinpath(f"{name}.json").read_text())


SERVER_ONLY_KEYS = ("slice_cache_mb", "stream_state_mb")


@dataclass(frozen=True)
class VtpruneSettings:
    prune: PruneConfig = field(default_factory=PruneConfig)
    # Requests naming the same stream share selection state (STC's history anchor, the temporal stage's
    # previous slice) across requests, in the worker that serves them; without one, a request stands alone.
    stream_id: str | None = None
    cacher: CacherConfig = field(default_factory=CacherConfig)  # STC-Cacher inside the vision tower
    slice_cache: bool = True  # use the worker's exact per-slice tower cache, when the server has one
    slice_cache_mb: int = 0  # server-wide: each worker's slice-cache budget; 0 turns the cache off
    stream_state_mb: int = 64  # server-wide: each worker's budget for stream state (on the CPU)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VtpruneSettings:
        """Validate ``{"preset"?, "method", "retention", "min_tokens_per_slice", "options", "stream_id"?,
        "cacher"?, "slice_cache"?, "slice_cache_mb"?}``."""
        d = dict(d)
        if "preset" in d:
            d = {**load_preset(d.pop("preset")), **d}
        stream_id = d.pop("stream_id", None)
        if stream_id is not None and (not isinstance(stream_id, str) or not stream_id):
            raise ValueError(f"vtprune.stream_id must be a non-empty string, got {stream_id!r}")
        slice_cache = d.pop("slice_cache", True)
        if not isinstance(slice_cache, bool):
            raise ValueError(f"vtprune.slice_cache must be true or false, got {slice_cache!r}")
        sizes = {key: d.pop(key, default) for key, default in (("slice_cache_mb", 0), ("stream_state_mb", 64))}
        for key, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"vtprune.{key} must be an integer >= 0, got {value!r}")
        cacher = CacherConfig.from_dict(d.pop("cacher", None))
        return cls(prune=PruneConfig.from_dict(d), stream_id=stream_id, cacher=cacher, slice_cache=slice_cache,
                   **sizes)

    def to_dict(self) -> dict[str, Any]:
        d = {**self.prune.to_dict(), "cacher": self.cacher.to_dict(), "slice_cache": self.slice_cache,
             "slice_cache_mb": self.slice_cache_mb, "stream_state_mb": self.stream_state_mb}
        if self.stream_id is not None:
            d["stream_id"] = self.stream_id
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def merged(self, override: Mapping[str, Any] | None) -> VtpruneSettings:
        """This server's settings with a request's override applied; an override naming another
        method starts from that method's defaults rather than this method's options."""
        if not override:
            return self
        if not isinstance(override, Mapping):
            raise ValueError(f"mm_processor_kwargs.{REQUEST_KEY} must be an object, got {type(override).__name__}")
        for key in SERVER_ONLY_KEYS:
            if key in override:
                raise ValueError(f"vtprune.{key} is a server setting (--vtprune-{key.replace('_', '-')})")
        base = self.to_dict()
        base.pop("stream_id", None)
        if "preset" in override or override.get("method", base["method"]) != base["method"]:
            base = {k: base[k] for k in ("cacher", "slice_cache", *SERVER_ONLY_KEYS)}
        merged = {**base, **override}
        for nested in ("options", "cacher"):  # a partial override of a nested object keeps the rest
            if isinstance(override.get(nested), Mapping):
                merged[nested] = {**base.get(nested, {}), **override[nested]}
        return VtpruneSettings.from_dict(merged)


@functools.lru_cache(maxsize=4)
def _parse(raw: str) -> VtpruneSettings:
    return VtpruneSettings.from_dict(json.loads(raw))


def settings_from_env() -> VtpruneSettings | None:
    """The active server-wide settings, or None when the plugin is not enabled in this process."""
    raw = os.environ.get(ENV_VAR)
    return _parse(raw) if raw else None


def server_settings() -> VtpruneSettings:
    """The server-wide settings, or the defaults where the plugin is not enabled (tests, tools)."""
    return settings_from_env() or VtpruneSettings()
