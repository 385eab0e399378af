"""Prometheus metrics on vLLM's ``/metrics``: what the plugin did to each video, and what it cost.

Token counts are known where placeholders are sized, in the API-server process, so they are plain
counters there. Vision-tower and selection times are only known in the workers; those histograms use
prometheus_client's own multiprocess (file-backed) values in a directory that the API server collects with
``MultiProcessCollector``. vLLM's own multiprocess mode is not used: it is only on with several API servers,
and turning it on for one would drop vLLM's in-memory API-server metrics from ``/metrics``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from vllm_vtprune.bounded import BoundedLRU
from vllm_vtprune.patches.prometheus_values import file_backed_values
from vllm_vtprune.vision.estimate import SavedSecondsEstimate

METRICS_DIR_ENV = "VLLM_VTPRUNE_METRICS_DIR"
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class VideoAccount:
    """What a video item's placeholder holds."""

    method: str
    unpruned: int
    kept: int


class ApiServerMetrics:
    """Counters of the videos the API server admitted to the engine.

    The processor remembers each video item's account by hash; a request counts once vLLM has accepted it (a
    request refused afterwards, e.g. by the encoder budget, counts nothing). On a processor-cache hit the API
    server gets the item back without its data, so the account it remembered is what counts. 2**16 entries
    outlast every item the processor cache can hold (video items are megabytes, it holds 4 GiB)."""

    def __init__(self) -> None:
        self.accounts: BoundedLRU[VideoAccount] = BoundedLRU(2**16, lambda key, value: 1)
        self.videos = Counter("vtprune:videos", "Videos whose placeholder the plugin sized.", ["method"])
        self.tokens_unpruned = Counter("vtprune:video_tokens_unpruned", "Video tokens before pruning.", ["method"])
        self.tokens_kept = Counter("vtprune:video_tokens_kept", "Video tokens sent to the LLM.", ["method"])
        self.processor_seconds = Histogram(
            "vtprune:api_processor_seconds", "API-server multimodal processing of a request with video "
            "(vLLM's processor: resizing, hashing; the plugin's share included; decoding not).", buckets=_TIME_BUCKETS)
        self.plugin_seconds = Histogram(
            "vtprune:api_plugin_seconds", "The plugin's share of the API-server processing of a request with "
            "video: layouts, pre-tower selection, slice keys.", buckets=_TIME_BUCKETS)
        directory = os.environ.get(METRICS_DIR_ENV)
        if directory is None:  # this process starts the workers: it owns the directory they write to
            directory = tempfile.mkdtemp(prefix="vtprune-metrics-")
            os.environ[METRICS_DIR_ENV] = directory
            atexit.register(shutil.rmtree, directory, True)
        MultiProcessCollector(REGISTRY, path=directory)

    def count_admitted(self, mm_features) -> None:
        """Count the videos of a request vLLM accepted."""
        for feature in mm_features or ():
            account = self.accounts.get(feature.mm_hash) if feature.modality == "video" else None
            if account is not None:
                self.videos.labels(account.method).inc()
                self.tokens_unpruned.labels(account.method).inc(account.unpruned)
                self.tokens_kept.labels(account.method).inc(account.kept)


class WorkerMetrics:
    """Histograms a worker observes; None of them exist when no API server collects them."""

    def __init__(self, directory: str) -> None:
        self.saved_seconds = SavedSecondsEstimate()
        with file_backed_values(directory):
            self.tower_seconds = Histogram("vtprune:vision_tower_seconds", "Vision-tower time per encoder batch.",
                                           buckets=_TIME_BUCKETS, registry=None)
            self.selection_seconds = Histogram("vtprune:selection_seconds", "Token-selection time per encoder batch.",
                                               buckets=_TIME_BUCKETS, registry=None)
            self.slice_cache_hits = Counter("vtprune:slice_cache_hits", "Video slices served from the slice cache.",
                                            registry=None)
            self.slice_cache_misses = Counter("vtprune:slice_cache_misses", "Video slices run through the tower.",
                                              registry=None)
            self.cacher_selective_slices = Counter("vtprune:cacher_selective_slices",
                                                   "Slices run with STC-Cacher's selective recomputation.",
                                                   registry=None)
            self.tower_seconds_saved = Counter("vtprune:vision_tower_seconds_saved",
                                               "Estimated vision-tower time saved by the slice cache and STC-Cacher.",
                                               registry=None)
            self.tower_patches_requested = Counter("vtprune:tower_patches_requested",
                                                   "Vision-tower patches of the videos encoded (unpruned).",
                                                   registry=None)
            self.tower_patches_computed = Counter("vtprune:tower_patches_computed",
                                                  "Vision-tower patches computed (after pre-tower pruning, cache "
                                                  "hits and selective recomputation).", registry=None)
            self.selection_fallbacks = Counter("vtprune:selection_fallbacks",
                                               "Videos whose method failed and got an evenly spaced selection.",
                                               registry=None)
            self.tower_fallbacks = Counter("vtprune:tower_fallbacks",
                                           "Tower passes whose reuse failed and ran the stock tower.", registry=None)
            self.stream_resets = Counter("vtprune:stream_resets",
                                         "Streams started afresh: other method or options, or a failed selection.",
                                         registry=None)
            self.slice_cache_bytes = Gauge("vtprune:slice_cache_bytes",
                                           "Bytes of vision-tower outputs held by the slice cache.",
                                           multiprocess_mode="livesum", registry=None)
            self.stream_state_bytes = Gauge("vtprune:stream_state_bytes", "Bytes of stream state held (CPU).",
                                            multiprocess_mode="livesum", registry=None)
            self.unplaced_rows = Counter("vtprune:unplaced_position_rows",
                                         "Steps whose pruned rows could not be mapped to the prompt.", registry=None)

    def record_streams(self, store) -> None:
        """Follow a ``StreamStore``: its bytes, and the resets since the last call."""
        self.stream_state_bytes.set(store.bytes_used)
        self.stream_resets.inc(store.resets - getattr(self, "_resets_seen", 0))
        self._resets_seen = store.resets

    def record_subset_tower(self, unpruned_patches: int, computed_patches: int) -> None:
        """A tower pass on the tokens a pre-tower stage kept."""
        self.tower_patches_requested.inc(unpruned_patches)
        self.tower_patches_computed.inc(computed_patches)

    def record_encode(self, stats) -> None:
        """Account one ``VideoEncoder.encode`` call (``vllm_vtprune.vision.EncodeStats``) once the device has
        finished it (its tower time is read)."""
        self.tower_patches_requested.inc(stats.tokens_total)
        self.tower_patches_computed.inc(stats.tokens_computed)
        self.slice_cache_hits.inc(stats.slices_from_cache)
        self.slice_cache_misses.inc(stats.slices_computed)
        self.cacher_selective_slices.inc(stats.cacher_selective_slices)
        self.tower_seconds_saved.inc(self.saved_seconds.record(stats))
        self.slice_cache_bytes.set(stats.slice_cache_bytes)

    @classmethod
    def from_env(cls) -> WorkerMetrics | None:
        directory = os.environ.get(METRICS_DIR_ENV)
        return cls(directory) if directory and os.path.isdir(directory) else None


_api_server_metrics: ApiServerMetrics | None = None


def api_server_metrics() -> ApiServerMetrics:
    global _api_server_metrics
    if _api_server_metrics is None:
        _api_server_metrics = ApiServerMetrics()
    return _api_server_metrics
