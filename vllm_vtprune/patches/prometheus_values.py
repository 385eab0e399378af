"""Swaps prometheus_client's value class while the plugin's worker metrics are created.

Why: prometheus_client picks its value class (in-memory or file-backed) once, when it is first imported, long
before a plugin runs; vLLM's worker processes import it without ``PROMETHEUS_MULTIPROC_DIR``. The plugin's
worker metrics must be file-backed so the API server can collect them, while vLLM's own stay in memory, so the
class is swapped only around their creation and restored after.

Remove when: prometheus_client lets a metric choose its value class, or vLLM collects worker metrics itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from prometheus_client import values


@contextlib.contextmanager
def file_backed_values(directory: str) -> Iterator[None]:
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
