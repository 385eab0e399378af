"""Exact per-slice reuse of vision-tower outputs: content keys (API-server side) and a byte-budgeted LRU (worker).

Why it is exact: Qwen3-VL's tower attends within each temporal slice (``cu_seqlens`` has one sequence per slice)
and its positional and rotary embeddings do not depend on ``t``, so a slice's output rows (main merger and
DeepStack channels) are a function of that slice's pixels and ``(H, W)`` only.

:func:`slice_keys` runs where the pixels already are (the multimodal processor, CPU): one 128-bit BLAKE3 digest
per slice over the slice's raw bytes, salted with the caller's salt (model id / revision / processor settings)
plus the grid ``(H, W)``, the row width ``C`` and the dtype, returned as ``int64 [T, 2]`` so it travels as a
tensor field. It needs no vLLM import.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from vllm_vtprune.bounded import BoundedLRU

KEY_VERSION = b"vtprune-slice-key-v1"

try:  # vLLM depends on blake3; hashlib keeps the module importable without it
    from blake3 import blake3 as _blake3
except ImportError:  # pragma: no cover - exercised only where blake3 is missing
    _blake3 = None


def _hasher(data: bytes) -> Any:
    if _blake3 is not None:
        return _blake3(data)
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(data)
    return h


def _as_bytes_2d(pixels: torch.Tensor | np.ndarray) -> tuple[np.ndarray, str]:
    """A C-contiguous ``uint8`` view ``[rows, C * itemsize]`` of the pixels, and their dtype name."""
    if isinstance(pixels, torch.Tensor):
        t = pixels.detach()
        if t.device.type != "cpu":
            t = t.cpu()  # keys belong where the pixels are (the processor); this path is a convenience
        t = t.contiguous()
        dtype_name = str(t.dtype).removeprefix("torch.")
        if t.dim() != 2:
            raise ValueError(f"pixel_values_videos must be 2-D [rows, C], got shape {tuple(t.shape)}")
        return t.view(torch.uint8).numpy(), dtype_name
    arr = np.ascontiguousarray(pixels)
    if arr.ndim != 2:
        raise ValueError(f"pixel_values_videos must be 2-D [rows, C], got shape {arr.shape}")
    return arr.view(np.uint8), str(arr.dtype)


def slice_keys(
    pixel_values_videos: torch.Tensor | np.ndarray, grid_thw: Sequence[int], salt: bytes
) -> torch.Tensor:
    """Content keys of one video's temporal slices: ``int64 [T, 2]`` (a 128-bit BLAKE3 digest per slice).

    ``pixel_values_videos``: this video's ``[T*H*W, C]`` patch rows (vLLM/HF layout); ``grid_thw``: ``[T, H, W]``
    in patches; slice ``t`` is rows ``[t*H*W, (t+1)*H*W)``. ``salt`` should name everything else the tower
    output depends on (model id and revision, processor normalisation); the grid, ``C`` and dtype are mixed in
    here. Equal keys <=> byte-identical slice pixels under the same salt, grid and dtype.
    """
    if isinstance(salt, str):
        salt = salt.encode()
    t_, h_, w_ = (int(x) for x in grid_thw)
    if min(t_, h_, w_) <= 0:
        raise ValueError(f"grid_thw must be positive, got {list(grid_thw)}")
    raw, dtype_name = _as_bytes_2d(pixel_values_videos)
    rows_per_slice = h_ * w_
    if raw.shape[0] != t_ * rows_per_slice:
        raise ValueError(
            f"pixel_values_videos has {raw.shape[0]} rows, grid {list(grid_thw)} needs {t_ * rows_per_slice}"
        )
    header = b"|".join(
        [
            KEY_VERSION,
            len(salt).to_bytes(4, "little") + salt,
            f"{h_}x{w_}|{raw.shape[1]}|{dtype_name}".encode(),
        ]
    )
    base = _hasher(header)
    out = np.empty((t_, 2), dtype=np.int64)
    for t in range(t_):  # one hash per slice (T is tens to hundreds); each hashes ~MBs at GB/s
        h = base.copy()
        h.update(memoryview(raw[t * rows_per_slice : (t + 1) * rows_per_slice]).cast("B"))
        out[t] = np.frombuffer(h.digest()[:16], dtype="<i8")
    return torch.from_numpy(out)


def slice_key_salt(*parts: object) -> bytes:
    """Convenience salt from printable parts, e.g. ``slice_key_salt(model_id, revision, mm_processor_kwargs)``."""
    return repr(tuple(parts)).encode()


class SliceCache(BoundedLRU[torch.Tensor]):
    """Byte-budgeted LRU of tensors (one entry per slice): ``BoundedLRU`` counting each tensor's bytes.

    Stored tensors are private copies (never views of a caller's larger tensor, so the byte count is real), on
    ``device`` when given, else on the tensor's own device.
    """

    def __init__(self, max_bytes: int, device: str | torch.device | None = None) -> None:
        super().__init__(max_bytes, size_of=lambda _key, tensor: self.nbytes(tensor))
        self.device = torch.device(device) if device is not None else None

    @staticmethod
    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def put(self, key: Hashable, value: torch.Tensor) -> bool:
        """Store a private copy; False (nothing stored, an older entry for ``key`` dropped) if it cannot fit."""
        if self.nbytes(value) > self.max_bytes:  # decided before copying
            self.pop(key)
            return False
        device = self.device if self.device is not None else value.device
        return super().put(key, value.detach().to(device=device, copy=True).contiguous())
