"""Run the plugin's small tensor work in the API server on one intra-op thread.

The API server and the engine share the machine's cores. PyTorch's CPU ops on the few-MB tensors the processor
handles (pre-tower scores, pixel gathers, layouts) finish in well under a millisecond on one thread, but with
the default thread count each op opens an OpenMP parallel region whose threads wait for cores the busy engine
holds: measured on the 2-core machine while an engine decodes, one 64 x 6144 uint8 reduction takes 10-40 ms on
2 threads and 0.1 ms on one, and the pre-tower selection of a 32-frame clip ~1 s instead of 10 ms. That time
is TTFT, and the spinning threads slow the engine too.

``torch.set_num_threads`` is process-wide, so the scope is restored on exit. vLLM runs multimodal processing on
one single-worker executor (``renderers/base.py``, ``_mm_executor``), so no other processor call runs meanwhile;
the rest of the API server's work (HTTP, tokenizing, video decoding) does not use PyTorch's thread pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
