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

from vllm_vtprune.core import PruneConfig, get_method
from vllm_vtprune.core.options import short_repr
from vllm_vtprune.vision.cacher_config import CacherConfig

ENV_VAR = "VLLM_VTPRUNE_CONFIG"
REQUEST_KEY = "vtprune"  # key inside mm_processor_kwargs


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vllm_vtprune.configs").iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ValueError(f"vtprune preset {name!r} is unknown; choose one of {preset_names()}")
    return json.loads(resources.files("vllm_vtprune.configs").joinpath(f"{name}.json").read_text())


MAX_STREAM_ID_CHARS = 256
OVERRIDE_POLICIES = ("any", "lower-cost", "none")
# Server-wide settings a request cannot set, with their defaults.
SERVER_ONLY = {"slice_cache_mb": 0, "stream_state_mb": 64, "request_overrides": "lower-cost"}


def _stream_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_STREAM_ID_CHARS:
        raise ValueError(f"vtprune.stream_id must be a non-empty string of at most {MAX_STREAM_ID_CHARS} "
                         f"characters, got {short_repr(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("vtprune.stream_id must be valid Unicode text (it holds a lone surrogate)") from None
    return value


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
    request_overrides: str = "lower-cost"  # server-wide: what a request may change (OVERRIDE_POLICIES)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VtpruneSettings:
        """Validate ``{"preset"?, "method", "retention", "min_tokens_per_slice", "options", "stream_id"?,
        "cacher"?, "slice_cache"?, "slice_cache_mb"?, "stream_state_mb"?, "request_overrides"?}``."""
        d = dict(d)
        if "preset" in d:
            d = {**load_preset(d.pop("preset")), **d}
        stream_id = _stream_id(d.pop("stream_id", None))
        slice_cache = d.pop("slice_cache", True)
        if not isinstance(slice_cache, bool):
            raise ValueError(f"vtprune.slice_cache must be true or false, got {short_repr(slice_cache)}")
        server = {key: d.pop(key, default) for key, default in SERVER_ONLY.items()}
        for key in ("slice_cache_mb", "stream_state_mb"):
            value = server[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"vtprune.{key} must be an integer >= 0, got {short_repr(value)}")
        if server["request_overrides"] not in OVERRIDE_POLICIES:
            raise ValueError(f"vtprune.request_overrides must be one of {list(OVERRIDE_POLICIES)}, "
                             f"got {short_repr(server['request_overrides'])}")
        cacher = CacherConfig.from_dict(d.pop("cacher", None))
        return cls(prune=PruneConfig.from_dict(d), stream_id=stream_id, cacher=cacher, slice_cache=slice_cache,
                   **server)

    def to_dict(self) -> dict[str, Any]:
        d = {**self.prune.to_dict(), "cacher": self.cacher.to_dict(), "slice_cache": self.slice_cache,
             **{key: getattr(self, key) for key in SERVER_ONLY}}
        if self.stream_id is not None:
            d["stream_id"] = self.stream_id
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def merged(self, override: Any) -> VtpruneSettings:
        """This server's settings with a request's override (``mm_processor_kwargs["vtprune"]``) applied, as
        the server's ``request_overrides`` policy allows; ValueError (HTTP 400) naming the key otherwise.

        ``None`` means no override. An override naming another method starts from that method's defaults rather
        than this method's options. Under ``lower-cost`` the per-video token budget is checked where the video's
        grid is known (``check_budget``)."""
        if override is None:
            return self
        if not isinstance(override, Mapping):
            raise ValueError(f"mm_processor_kwargs.{REQUEST_KEY} must be an object, got {short_repr(override)}")
        if self.request_overrides == "none":
            raise ValueError("this server takes no per-request vtprune settings (--vtprune-request-overrides none)")
        for key in SERVER_ONLY:
            if key in override:
                raise ValueError(f"vtprune.{key} is a server setting (--vtprune-{key.replace('_', '-')})")
        base = self.to_dict()
        base.pop("stream_id", None)
        if "preset" in override or override.get("method", base["method"]) != base["method"]:
            base = {k: base[k] for k in ("cacher", "slice_cache", *SERVER_ONLY)}
        merged = {**base, **override}
        for nested in ("options", "cacher"):  # a partial override of a nested object keeps the rest
            if isinstance(override.get(nested), Mapping):
                merged[nested] = {**base.get(nested, {}), **override[nested]}
        settings = VtpruneSettings.from_dict(merged)
        if self.request_overrides == "lower-cost":
            self._check_lower_cost(settings)
        return settings

    def _check_lower_cost(self, request: VtpruneSettings) -> None:
        """What a request may not raise beyond this server's settings, except its token budget (per video)."""
        policy = "this server only lets a request lower its cost (--vtprune-request-overrides lower-cost)"
        own = get_method(self.prune.method).options(self.prune).costly() if request.prune.method == self.prune.method \
            else {}
        for name, value in get_method(request.prune.method).options(request.prune).costly().items():
            if own.get(name) != value:
                raise ValueError(f"vtprune.options.{name}={value!r} costs more than this server's settings; {policy}")
        if request.cacher.tower_cost > self.cacher.tower_cost + 1e-9:
            raise ValueError(f"vtprune.cacher {request.cacher.to_dict()} computes more of the vision tower than "
                             f"this server's {self.cacher.to_dict()}; {policy}")
        if self.slice_cache and not request.slice_cache:
            raise ValueError(f"vtprune.slice_cache=false would recompute cached slices; {policy}")

    def check_budget(self, request_kept: int, server_kept: int) -> None:
        """Under ``lower-cost``, a video may keep no more tokens than the server's settings keep of it."""
        if self.request_overrides == "lower-cost" and request_kept > server_kept:
            raise ValueError(f"these vtprune settings keep {request_kept} tokens of this video where this server's "
                             f"keep {server_kept}; this server only lets a request lower its cost "
                             "(--vtprune-request-overrides lower-cost)")


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
