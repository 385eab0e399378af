"""Lets vLLM's CPU model runner call the model's multimodal-pruning hook, as the GPU runners do.

Why: vLLM 0.32's V1 ``CPUModelRunner.load_model`` replaces ``GPUModelRunner.load_model`` and never sets
``is_multimodal_pruning_enabled``, so on CPU the runner never calls ``recompute_mrope_positions`` (the same bug
makes vLLM's own ``--video-pruning-rate`` crash on CPU). The plugin places pruned tokens through that hook, so
the flag is set here exactly as ``GPUModelRunner.load_model`` sets it.

Remove when: vLLM's CPU runner sets the flag itself.
"""

from __future__ import annotations

from vllm_vtprune.compat import require


def apply() -> None:
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning

    runner = require("vllm.v1.worker.cpu_model_runner:CPUModelRunner")
    original = runner.load_model
    if getattr(original, "_vtprune", False):
        return

    def load_model(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        mm_config = self.model_config.multimodal_config
        self.is_multimodal_pruning_enabled = (
            supports_multimodal_pruning(self.get_model())
            and mm_config is not None
            and mm_config.is_multimodal_pruning_enabled()
        )

    load_model._vtprune = True
    runner.load_model = load_model
