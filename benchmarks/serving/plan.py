"""What a run measures: configurations, video specs, and points (configuration x concurrency).

Two sweeps share one plan, because they answer different questions:

- the *retention sweep* runs every method at every retention at the lowest concurrency (TTFT vs retention:
  what pruning buys one user);
- the *concurrency sweep* runs vanilla, the plugin with pruning off (``none``) and every method at one
  retention across the concurrency levels (throughput vs concurrency: whether pruning still pays when the
  server is busy: vLLM's EVS on Cosmos3-Edge, H200, gave +10 % requests/s at concurrency 1 but -54 % at
  concurrency 32, vLLM PR #51221).

``none`` is the retention-1.0 point of every method (it keeps all tokens), so the sweep does not repeat
``method@1.0`` unless asked to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vllm_vtprune.core.registry import available_methods

VANILLA = "vanilla"
PLUGIN = "plugin"
# The serving sweep measures pruning as users get it by default, without the slice cache (the plugin server
# has a slice-cache budget for the streaming benchmark; a request with this setting computes no slice keys).
NO_SLICE_CACHE = {"slice_cache": False}


@dataclass(frozen=True)
class Config:
    """One serving configuration. Plugin configurations run on one shared plugin server and select their
    settings per request (``mm_processor_kwargs.vtprune``), which the plugin merges exactly as it would
    server flags; that saves a server start-up (~40 s here) per configuration."""

    name: str
    server: str  # VANILLA or PLUGIN (or another plugin server's name)
    method: str | None = None
    retention: float | None = None
    extra: str = ""  # JSON object merged into the override (slice_cache, cacher, options, ...)

    @property
    def vtprune(self) -> dict[str, Any] | None:
        """The per-request override, or None for vanilla."""
        if self.server == VANILLA:
            return None
        if self.method in available_methods("pre_tower"):  # decided from pixels: the tower runs on the kept groups
            base = {"method": "none", "pre_tower": {"method": self.method, "retention": self.retention}}
        else:
            base = {k: v for k, v in (("method", self.method), ("retention", self.retention)) if v is not None}
        return {**base, **(json.loads(self.extra) if self.extra else {})}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "server": self.server, "method": self.method, "retention": self.retention,
                "vtprune": self.vtprune}


VANILLA_CONFIG = Config(VANILLA, VANILLA)


def plugin_config(method: str, retention: float = 1.0, extra: dict[str, Any] | None = None, suffix: str = "",
                  server: str = PLUGIN) -> Config:
    """``none`` (which keeps every token, whatever the retention) or ``method@retention``."""
    extra_json = json.dumps(NO_SLICE_CACHE if extra is None else extra, sort_keys=True)
    if method == "none":
        return Config("none" + suffix, server, "none", 1.0, extra_json)
    return Config(f"{method}@{retention:g}{suffix}", server, method, float(retention), extra_json)


def parse_config(text: str, server: str = PLUGIN) -> Config:
    """``none``, ``METHOD@RETENTION``, either with ``+slice-cache``, or ``NAME=JSON`` (a full override)."""
    if "=" in text:
        name, raw = text.split("=", 1)
        override = json.loads(raw)
        if not isinstance(override, dict):
            raise ValueError(f"{text!r}: the override must be a JSON object")
        rest = {k: v for k, v in override.items() if k not in ("method", "retention")}
        return Config(name, server, override.get("method"), override.get("retention"), json.dumps(rest))
    spec, cached = (text[: -len("+slice-cache")], True) if text.endswith("+slice-cache") else (text, False)
    method, _, retention = spec.partition("@")
    return plugin_config(method, float(retention or 1.0), {"slice_cache": cached},
                         "+slice-cache" if cached else "", server)


NONE_CONFIG = plugin_config("none")


@dataclass(frozen=True)
class VideoSpec:
    """Geometry of one request video; ``fps`` 2 matches Qwen3-VL's default sampling, so every frame is used."""

    frames: int
    width: int
    height: int
    fps: float = 2.0

    @classmethod
    def parse(cls, text: str, fps: float = 2.0) -> VideoSpec:
        """``"32x256x256"`` = frames x width x height."""
        try:
            frames, width, height = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"video spec must be FRAMESxWIDTHxHEIGHT, got {text!r}") from None
        return cls(frames, width, height, fps)

    @property
    def label(self) -> str:
        return f"{self.frames}f {self.width}x{self.height} @{self.fps:g}fps"

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "width": self.width, "height": self.height, "fps": self.fps}


@dataclass(frozen=True)
class Point:
    """One measured cell: a configuration at a concurrency, with a fixed number of requests per repeat."""

    config: Config
    concurrency: int
    num_requests: int
    sweep: str  # "retention", "concurrency" or "both"

    @property
    def key(self) -> tuple[str, int]:
        return self.config.name, self.concurrency


def requests_per_point(concurrency: int, num_specs: int, waves: int) -> int:
    """At least one request per video spec, and ``waves`` full rounds of the concurrency (so the server
    spends most of the point at the target concurrency, not in the ramp-down)."""
    return max(num_specs, waves * concurrency)


def build_plan(
    methods: list[str],
    retentions: list[float],
    concurrencies: list[int],
    sweep_retention: float,
    num_specs: int,
    waves: int = 2,
    extra_configs: list[Config] = (),
) -> list[Point]:
    """The points of both sweeps, each once, vanilla first; ``extra_configs`` join both sweeps."""
    base = min(concurrencies)
    pruning = [m for m in methods if m != "none"]
    retention_configs = [VANILLA_CONFIG, NONE_CONFIG, *(plugin_config(m, r) for m in pruning for r in retentions),
                         *extra_configs]
    concurrency_configs = [VANILLA_CONFIG, NONE_CONFIG, *(plugin_config(m, sweep_retention) for m in pruning),
                           *extra_configs]
    points: dict[tuple[str, int], Point] = {}

    def add(config: Config, c: int, sweep: str) -> None:
        key = (config.name, c)
        if key in points:
            if points[key].sweep != sweep:
                points[key] = Point(config, c, points[key].num_requests, "both")
            return
        points[key] = Point(config, c, requests_per_point(c, num_specs, waves), sweep)

    for config in retention_configs:
        add(config, base, "retention")
    for c in sorted(concurrencies):
        for config in concurrency_configs:
            add(config, c, "concurrency")
    return list(points.values())
