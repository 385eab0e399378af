"""ViT reuse and pre-tower pruning for Qwen3-VL video inside vLLM's vision tower.

- :class:`CacherConfig` — STC-Cacher settings (no torch/vLLM import).
- :func:`slice_keys` — per-slice content keys, computed in the processor where the pixels are (no vLLM import).
- :class:`SliceCache` — byte-budgeted LRU of per-slice tower outputs.
- ``plan`` — what a batch computes: slice roles, cache hits, aliases, the subset tower's rows (no tower needed).
- :class:`VideoEncoder`, :class:`EncodeStats` — run a plan on the tower (``encoder``; ``selective`` is
  STC-Cacher's layer loop); ``subset_tower`` — the tower on a pre-tower stage's kept groups (vLLM imported lazily,
  when the tower runs).
- ``estimate`` — seconds the reuse saved, from the encode calls' tower times.
- ``vllm_mirror`` — every piece copied from vLLM, each naming its upstream function (with a tripwire test).
- :func:`build_vision_tower` (``vllm_vtprune.vision.standalone``) — vLLM's tower on its own, for tests/benchmarks.
"""

from .cacher_config import CacherConfig
from .encoder import EncodeStats, VideoEncoder
from .slice_cache import SliceCache, slice_key_salt, slice_keys

__all__ = ["CacherConfig", "EncodeStats", "SliceCache", "VideoEncoder", "slice_key_salt", "slice_keys"]
