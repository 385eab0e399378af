"""Prometheus metrics on vLLM's ``/metrics``: what the plugin did to each video, and what it cost.

Token counts are known where placeholders are sized, in the API-server process, so they are plain
counters there. Vision-tower and selection times are only known in the workers; those histograms use
prometheus_client's own multiprocess (file-backed) values in a directory that the API server collects with
``MultiProcessCollector``. vLLM's own multiprocess mode is not used: it is only on with several API servers,
and turning it on for one would drop vLLM's in-memory API-server metrics from ``/metrics``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

METRICS_DIR_ENV = "VLLM_VTPRUNE_METRICS_DIR"
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ApiServerMetrics:
    def __init__(self) -> None:
        self.videos = Counter("vtprune:videos", "Videos whose placeholder the plugin sized.", ["method"])
        self.tokens_unpruned = Counter("vtprune:video_tokens_unpruned", "Video tokens before pruning.", ["method"])
        self.tokens_kept = Counter("vtprune:video_tokens_kept", "Video tokens sent to the LLM.", ["method"])
        directory = os.environ.get(METRICS_DIR_ENV)
        if directory is None:  # this process starts the workers: it owns the directory they write to
            directory = tempfile.mkdtemp(prefix="vtprune-metrics-")
            os.environ[METRICS_DIR_ENV] = directory
            atexit.register(shutil.rmtree, directory, True)
        MultiProcessCollector(REGISTRY, path=directory)

    def record_video(self, method: str, unpruned: int, kept: int) -> None:
        self.videos.labels(method).inc()
        self.tokens_unpruned.labels(method).inc(unpruned)
        self.tokens_kept.labels(method).inc(kept)


@contextlib.contextmanager
def _file_backed_values(directory: str) -> Iterator[None]:
    """Create metrics whose values live in ``directory`` (prometheus_client picks the value class at import,
    long before a plugin runs, so it is chosen here explicitly for our metrics only)."""
    saved_class, saved_env = values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    values.ValueClass = values.MultiProcessValue()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        yield
    finally:
        values.ValueClass = saved_class
        if saved_env is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved_env


class WorkerMetrics:
    """Histograms a worker observes; None of them exist when no API server collects them."""

    def __init__(self, directory: str) -> None:
        with _file_backed_values(directory):
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
            self.selection_fallbacks = Counter("vtprune:selection_fallbacks",
                                               "Videos whose method failed and got an evenly spaced selection.",
                                               registry=None)
            self.unplaced_rows = Counter("vtprune:unplaced_position_rows",
                                         "Steps whose pruned rows could not be mapped to the prompt.", registry=None)

    def record_encode(self, stats) -> None:
        """Account one ``VideoEncoder.encode`` call (``vllm_vtprune.vision.EncodeStats``)."""
        self.slice_cache_hits.inc(stats.slices_from_cache)
        self.slice_cache_misses.inc(stats.slices_computed)
        self.cacher_selective_slices.inc(stats.cacher_selective_slices)
        self.tower_seconds_saved.inc(stats.seconds_saved_estimate)

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
