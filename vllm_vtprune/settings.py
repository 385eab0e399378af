"""The plugin's configuration: parsed once, validated, and carried to every process vLLM starts.

Server-wide settings come from ``--plugin vtprune --vtprune-*`` (or ``additional_config={"vtprune": ...}``)
and travel as JSON in ``VLLM_VTPRUNE_CONFIG``: spawned engine-core and worker processes inherit it, and
vLLM's Ray executor copies every ``VLLM_*`` variable to its workers. A request may override them through
``mm_processor_kwargs={"vtprune": {...}}``; :func:`VtpruneSettings.merged` applies such an override.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from vllm_vtprune.core import PruneConfig

ENV_VAR = "VLLM_VTPRUNE_CONFIG"
REQUEST_KEY = "vtprune"  # key inside mm_processor_kwargs


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vllm_vtprune.configs").iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ValueError(f"vtprune preset {name!r} is unknown; choose one of {preset_names()}")
    return json.loads(resources.files("vllm_vtprune.configs").joinpath(f"{name}.json").read_text())


@dataclass(frozen=True)
class VtpruneSettings:
    prune: PruneConfig = field(default_factory=PruneConfig)
    # Requests naming the same stream share selection state (STC's history anchor, the temporal stage's
    # previous slice) across requests, in the worker that serves them; without one, a request stands alone.
    stream_id: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VtpruneSettings:
        """Validate ``{"preset"?, "method", "retention", "min_tokens_per_slice", "options", "stream_id"?}``."""
        d = dict(d)
        if "preset" in d:
            d = {**load_preset(d.pop("preset")), **d}
        stream_id = d.pop("stream_id", None)
        if stream_id is not None and (not isinstance(stream_id, str) or not stream_id):
            raise ValueError(f"vtprune.stream_id must be a non-empty string, got {stream_id!r}")
        return cls(prune=PruneConfig.from_dict(d), stream_id=stream_id)

    def to_dict(self) -> dict[str, Any]:
        d = self.prune.to_dict()
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
        base = self.prune.to_dict()
        if "preset" in override or override.get("method", base["method"]) != base["method"]:
            base = {}
        options = {**base.get("options", {}), **override.get("options", {})}
        return VtpruneSettings.from_dict({**base, **override, "options": options})


def settings_from_env() -> VtpruneSettings | None:
    """The active server-wide settings, or None when the plugin is not enabled in this process."""
    raw = os.environ.get(ENV_VAR)
    return VtpruneSettings.from_dict(json.loads(raw)) if raw else None
