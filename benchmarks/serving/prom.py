"""``/metrics`` snapshots and the deltas the benchmark reports around each point.

Counters and histogram sums only grow, so the work a point caused is ``after - before``. A metric the server
does not export (vanilla has no ``vtprune:*``; older plugin builds lack some) gives None, reported as "n/a".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# Deltas recorded per point: report key -> metric sample name (summed over label sets).
DELTAS = {
    "tower_seconds": "vtprune:vision_tower_seconds_sum",
    "tower_batches": "vtprune:vision_tower_seconds_count",
    "selection_seconds": "vtprune:selection_seconds_sum",
    "videos": "vtprune:videos_total",
    "video_tokens_unpruned": "vtprune:video_tokens_unpruned_total",
    "video_tokens_kept": "vtprune:video_tokens_kept_total",
    "slice_cache_hits": "vtprune:slice_cache_hits_total",
    "slice_cache_misses": "vtprune:slice_cache_misses_total",
    "server_prompt_tokens": "vllm:prompt_tokens_total",
    "server_prompt_tokens_cached": "vllm:prompt_tokens_cached_total",
    "server_prefill_seconds": "vllm:request_prefill_time_seconds_sum",
    "server_queue_seconds": "vllm:request_queue_time_seconds_sum",
    "server_decode_seconds": "vllm:request_decode_time_seconds_sum",
    "api_processor_seconds": "vtprune:api_processor_seconds_sum",
    "api_plugin_seconds": "vtprune:api_plugin_seconds_sum",
    "server_requests": "vllm:request_prefill_time_seconds_count",
    "mm_cache_hits": "vllm:mm_cache_hits_total",
    "preemptions": "vllm:num_preemptions_total",
}


@dataclass
class Snapshot:
    """Parsed exposition text: sample name -> {sorted label pairs -> value}."""

    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        snap = cls()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if not m:
                continue
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
            snap.samples.setdefault(m.group(1), {})[labels] = value
        return snap

    def total(self, name: str) -> float | None:
        values = self.samples.get(name)
        return sum(values.values()) if values else None


def deltas(before: Snapshot, after: Snapshot) -> dict[str, float | None]:
    """Every :data:`DELTAS` entry as ``after - before`` (None where the server lacks the metric)."""
    out: dict[str, float | None] = {}
    for key, name in DELTAS.items():
        a, b = after.total(name), before.total(name)
        out[key] = None if a is None else a - (b or 0.0)
    return out


def kv_cache_usage(text: str) -> float | None:
    """vLLM's ``vllm:kv_cache_usage_perc`` gauge (a fraction, despite the name), max over engines."""
    values = Snapshot.parse(text).samples.get("vllm:kv_cache_usage_perc")
    return max(values.values()) if values else None
