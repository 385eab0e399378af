"""Counts a request's videos in ``/metrics`` once vLLM has accepted the request.

Why: the plugin's processor sizes each video in the API server, but vLLM may still refuse the request after it
(e.g. a video larger than the encoder cache, a prompt longer than the model), and such a request must not count.
``InputProcessor.process_inputs`` is where vLLM 0.32 validates a processed request and builds what it sends to
the engine, so counting after it returns counts exactly the admitted requests (cache hits included).

Remove when: vLLM offers an admission hook to stat plugins (``vllm.stat_logger_plugins`` sees engine-side stats
only as of 0.32).
"""

from __future__ import annotations

from vllm_vtprune.compat import require


def apply() -> None:
    processor = require("vllm.v1.engine.input_processor:InputProcessor")
    original = processor.process_inputs
    if getattr(original, "_vtprune", False):
        return
    from vllm_vtprune.metrics import api_server_metrics

    def process_inputs(self, *args, **kwargs):
        request = original(self, *args, **kwargs)
        api_server_metrics().count_admitted(request.mm_features)
        return request

    process_inputs._vtprune = True
    processor.process_inputs = process_inputs
