"""Clears the plugin's per-slice vision-tower cache whenever vLLM resets its encoder cache.

Why: vLLM 0.32 resets its encoder cache (``POST /reset_encoder_cache``, weight reloads, pause-and-clear) through
the model runner's ``reset_encoder_cache``, which never tells the model. Our slice cache holds tower outputs too,
so it must be dropped at the same moments (stale features after a weight reload would be silently wrong).
Both runners (V1, used on CPU; V2, the GPU default) are wrapped; the wrap calls the model's
``reset_vtprune_caches`` when it has one.

Remove when: vLLM gives models a hook on encoder-cache resets (none as of 0.32).
"""

from __future__ import annotations

from vllm_vtprune.compat import require

_RUNNERS = ("vllm.v1.worker.gpu_model_runner:GPUModelRunner", "vllm.v1.worker.gpu.model_runner:GPUModelRunner")


def apply() -> None:
    for path in _RUNNERS:
        runner = require(path)
        original = runner.reset_encoder_cache
        if getattr(original, "_vtprune", False):
            continue

        def reset_encoder_cache(self, _original=original) -> None:
            _original(self)
            reset = getattr(self.get_model(), "reset_vtprune_caches", None)
            if reset is not None:
                reset()

        reset_encoder_cache._vtprune = True
        runner.reset_encoder_cache = reset_encoder_cache
