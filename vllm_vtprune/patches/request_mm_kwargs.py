"""Lets ``mm_processor_kwargs={"vtprune": {...}}`` through vLLM's per-request kwargs gate.

Why: vLLM 0.32 rejects every per-request ``mm_processor_kwargs`` unless the server runs with
``--trust-request-mm-kwargs``, because arbitrary processor kwargs can raise preprocessing cost. Our key only
selects pruning settings, validated by the plugin, and can never make a request cost more than it would
unpruned, so a plugin-enabled server accepts it by itself. Every other key stays behind the gate.

Remove when: vLLM lets a plugin declare which request kwargs are safe (not available as of 0.32).
"""

from __future__ import annotations

from vllm_vtprune.compat import require
from vllm_vtprune.settings import REQUEST_KEY


def apply() -> None:
    online_renderer = require("vllm.renderers.online_renderer")
    original = online_renderer.validate_request_mm_kwargs
    if getattr(original, "_vtprune", False):
        return

    def validate_request_mm_kwargs(*, mm_processor_kwargs, media_io_kwargs, trust_request_mm_kwargs):
        others = {k: v for k, v in (mm_processor_kwargs or {}).items() if k != REQUEST_KEY}
        original(mm_processor_kwargs=others or None, media_io_kwargs=media_io_kwargs,
                 trust_request_mm_kwargs=trust_request_mm_kwargs)

    validate_request_mm_kwargs._vtprune = True
    online_renderer.validate_request_mm_kwargs = validate_request_mm_kwargs
