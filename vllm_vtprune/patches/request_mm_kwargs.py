"""Lets ``mm_processor_kwargs={"vtprune": {...}}`` through vLLM's per-request kwargs gate, validated first.

Why: vLLM 0.32 rejects every per-request ``mm_processor_kwargs`` unless the server runs with
``--trust-request-mm-kwargs``, because arbitrary processor kwargs can raise preprocessing cost. Our key only
selects pruning settings, which the server's ``--vtprune-request-overrides`` policy bounds (by default a request
may only lower its cost), so a plugin-enabled server accepts it by itself; every other key stays behind the gate.
The key is validated here, where every chat and completion request passes, so a bad value gets the same HTTP 400
whether or not the request holds a video.

Remove when: vLLM lets a plugin declare which request kwargs are safe (not available as of 0.32).
"""

from __future__ import annotations

from vllm_vtprune.compat import require
from vllm_vtprune.settings import REQUEST_KEY, server_settings


def apply() -> None:
    online_renderer = require("vllm.renderers.online_renderer")
    original = online_renderer.validate_request_mm_kwargs
    if getattr(original, "_vtprune", False):
        return
    from vllm.exceptions import VLLMValidationError

    def validate_request_mm_kwargs(*, mm_processor_kwargs, media_io_kwargs, trust_request_mm_kwargs):
        kwargs = mm_processor_kwargs or {}
        if REQUEST_KEY in kwargs:
            try:
                server_settings().merged(kwargs[REQUEST_KEY])
            except ValueError as e:
                raise VLLMValidationError(str(e), parameter=f"mm_processor_kwargs.{REQUEST_KEY}") from None
        others = {k: v for k, v in kwargs.items() if k != REQUEST_KEY}
        original(mm_processor_kwargs=others or None, media_io_kwargs=media_io_kwargs,
                 trust_request_mm_kwargs=trust_request_mm_kwargs)

    validate_request_mm_kwargs._vtprune = True
    online_renderer.validate_request_mm_kwargs = validate_request_mm_kwargs
