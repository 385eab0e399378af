"""Peak memory of a server while a point runs: RSS of its whole process tree, and GPU memory if any.

A ``vllm serve`` is an API-server process, an engine-core process and (on some backends) workers, so the
tree is summed. RSS counts pages shared between processes once per process; the figure is comparable
between servers of the same kind, not an exact footprint. On CPU the KV cache is preallocated
(``VLLM_CPU_KVCACHE_SPACE``), so pruning shows up only in activations and tower buffers. On GPU, vLLM
preallocates ``--gpu-memory-utilization`` of the device; the per-process figure from ``nvidia-smi`` is
reported as is.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from typing_extensions import Self


def tree_pids(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            total += psutil.Process(p).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def gpu_bytes(pids: list[int]) -> int | None:
    """GPU memory used by these processes per ``nvidia-smi``; None without an NVIDIA GPU."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    wanted, total = set(pids), 0
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) in wanted and parts[1].isdigit():
            total += int(parts[1]) * 2**20
    return total


class PeakSampler:
    """``with PeakSampler(pid) as s: ...`` then ``s.peak_rss`` / ``s.peak_gpu`` (bytes) and ``s.peak_kv``
    (fraction). Samples RSS every ``interval`` s on a thread (cheap: /proc reads); GPU memory and the
    ``kv_probe`` (vLLM's KV-cache usage gauge, what pruning saves on a GPU where KV is the limit) at most
    once per ``slow_interval`` s, since each costs a subprocess or an HTTP request."""

    def __init__(self, pid: int, interval: float = 0.2, slow_interval: float = 1.0,
                 kv_probe: Callable[[], float | None] | None = None):
        self.pid, self.interval, self.gpu_interval = pid, interval, slow_interval
        self.kv_probe = kv_probe
        self.peak_rss = 0
        self.peak_gpu: int | None = None
        self.peak_kv: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._gpu = shutil.which("nvidia-smi") is not None

    def _sample(self, slow: bool) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
        if slow and self.kv_probe is not None:
            kv = self.kv_probe()
            if kv is not None:
                self.peak_kv = max(self.peak_kv or 0.0, kv)
        if slow and self._gpu:
            g = gpu_bytes(tree_pids(self.pid))
            if g is not None:
                self.peak_gpu = max(self.peak_gpu or 0, g)

    def _run(self) -> None:
        last_slow = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            slow = now - last_slow >= self.gpu_interval
            self._sample(slow)
            last_slow = now if slow else last_slow
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(slow=False)
