"""STC-Cacher selection math, pure torch (no vLLM import): which slices are references, which tokens to recompute.

Port of STC's ViT feature caching with selective recomputation (arXiv 2512.00891; official code
``model/custom_siglip.py::forward_with_selective_key_recompute`` and ``stc/core/selectors.py``). The layer-level
forward that uses these helpers lives in ``vllm_vtprune.vision.selective`` (it needs vLLM's Qwen3-VL vision tower).

Schedule (:func:`reference_slices`): within one video, temporal slice ``t`` is a *reference* (full compute, its
per-layer keys, values, attention-branch and MLP-branch outputs are kept) when ``t % refresh_interval == 0``;
any other slice reuses the most recent reference ``t - t % refresh_interval`` of the same video. This is the
released periodic refresh (``chunk_idx % cache_interval == 0``) with one Qwen3-VL temporal slice (two frames) per
chunk; there is no similarity-triggered refresh, as in the released code.

Selection: per non-reference slice and per layer, the ``k = max(1, floor(r*N))`` (:func:`num_recomputed`) tokens
whose keys moved most, i.e. with the lowest cosine between the fresh key and the reference's key at the same token
index, all heads concatenated (:func:`lowest_k` of the cosines). Deviations from the released code, both only about
ties and order:

- ties go to the lower token index (stable sort; the released ``topk(largest=False)`` leaves them unspecified);
- the returned indices are sorted ascending (raster order), so gathers and scatters are cache-friendly and the
  result does not depend on the selection order.

Tensor-parallel towers compute each rank's heads only: reduce the three partial sums of
:func:`key_similarity_terms` over the TP group before :func:`cosine_from_terms`, so every rank selects the same
tokens.
"""

from __future__ import annotations

import math

import torch

from .similarity import COSINE_EPS


def num_recomputed(num_tokens: int, ratio: float) -> int:
    """Tokens recomputed per non-reference slice: ``max(1, floor(ratio * num_tokens))``, at most ``num_tokens``."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be positive, got {num_tokens}")
    # The epsilon keeps exact products (0.25 * 256) exact despite binary rounding of the ratio.
    return max(1, min(num_tokens, math.floor(ratio * num_tokens + 1e-9)))


def reference_slices(num_slices: int, refresh_interval: int) -> list[int]:
    """``ref[t]``: the reference slice of slice ``t`` (``t`` itself for a reference), ``t - t % refresh_interval``."""
    if refresh_interval < 1:
        raise ValueError(f"refresh_interval must be >= 1, got {refresh_interval}")
    return [t - t % refresh_interval for t in range(num_slices)]


def key_similarity_terms(keys: torch.Tensor, ref_keys: torch.Tensor) -> torch.Tensor:
    """``[3, ...]``: per-token ``<k, k_ref>``, ``|k|^2``, ``|k_ref|^2`` over the last dim, in fp32.

    Partial sums over heads add up, so a tensor-parallel tower all-reduces this tensor across ranks.
    """
    if keys.shape != ref_keys.shape:
        raise ValueError(f"keys {tuple(keys.shape)} and ref_keys {tuple(ref_keys.shape)} differ in shape")
    k = keys.float()
    r = ref_keys.float()
    dot = torch.einsum("...d,...d->...", k, r)
    return torch.stack(
        (dot, torch.linalg.vector_norm(k, dim=-1).square(), torch.linalg.vector_norm(r, dim=-1).square())
    )


def cosine_from_terms(terms: torch.Tensor, eps: float = COSINE_EPS) -> torch.Tensor:
    """Cosine from :func:`key_similarity_terms`, with torch's ``cosine_similarity`` clamping of each norm."""
    dot, kk, rr = terms.unbind(0)
    return dot / (kk.sqrt().clamp_min(eps) * rr.sqrt().clamp_min(eps))


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` lowest entries of each row of ``scores`` ``[..., N]``, ties to the lower index,
    returned sorted ascending (``int64 [..., k]``). NaN scores rank last (never preferred).

    The set equals a stable ascending argsort's first ``k``. On CPU a partial ``topk(k + 1)`` is tried first: when
    every row's k-th and (k+1)-th lowest differ, the set is unique whatever the tie order, so it is the same set.
    """
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k == n:
        return torch.arange(n, device=scores.device).expand(*scores.shape[:-1], n).contiguous()
    scores = torch.nan_to_num(scores, nan=math.inf)
    if scores.device.type == "cpu":  # the check below reads a value: free on CPU, a sync elsewhere
        vals, idx = torch.topk(scores, k + 1, dim=-1, largest=False, sorted=True)
        if bool((vals[..., k - 1] < vals[..., k]).all()):
            return idx[..., :k].sort(dim=-1).values
    order = torch.argsort(scores, dim=-1, stable=True)
    return order[..., :k].sort(dim=-1).values


def flat_row_index(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Row numbers of ``idx`` ``[G, k]`` (token indices per slice) in the flattened ``[G * num_tokens]`` rows."""
    if idx.dim() == 1:
        return idx
    g = idx.shape[0]
    offsets = torch.arange(g, device=idx.device, dtype=idx.dtype).mul_(num_tokens)
    return (idx.reshape(g, -1) + offsets.unsqueeze(1)).reshape(-1)
