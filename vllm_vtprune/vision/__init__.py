"""ViT reuse for Qwen3-VL video (issue 5): STC-Cacher inside vLLM's vision tower and an exact per-slice cache.

- :class:`CacherConfig` — STC-Cacher settings (no torch/vLLM import).
- :func:`slice_keys` — per-slice content keys, computed in the processor where the pixels are (no vLLM import).
- :class:`SliceCache` — byte-budgeted LRU of per-slice tower outputs.
- :class:`VideoEncoder`, :class:`EncodeStats` — run the tower for a batch of videos with both (vLLM imported
  lazily, when the tower runs).
- :func:`build_vision_tower` (``vllm_vtprune.vision.standalone``) — vLLM's tower on its own, for tests/benchmarks.
"""

from .cacher_config import CacherConfig
from .encoder import EncodeStats, VideoEncoder
from .slice_cache import SliceCache, slice_key_salt, slice_keys

__all__ = ["CacherConfig", "EncodeStats", "SliceCache", "VideoEncoder", "slice_key_salt", "slice_keys"]
