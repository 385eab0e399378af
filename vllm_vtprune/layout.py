"""How a video's placeholder is laid out in the prompt: decided once in the API server, reproduced in the worker.

Qwen3-VL writes a video as, per temporal slice ``t``: the timestamp text ``<x.y seconds>``, ``<|vision_start|>``,
the slice's ``<|video_pad|>`` tokens and ``<|vision_end|>``. vLLM must size the placeholder before the vision
tower runs, so two layouts exist:

- **exact**: the tokens each slice keeps are known before the tower: all of them (method ``none`` or
  retention 1.0), or those a pre-tower stage chose from the pixels in the API server (``cells``). The prompt
  is vLLM's own layout with each slice's kept count, only the pads carry embeddings, and every position is
  final at request start; with every token kept the request is accounted, placed and computed exactly as
  vanilla vLLM would.
- **dynamic**: a post-tower method decides how many tokens each slice keeps (V-CAST's per-slice budgets, the
  temporal stages), so the real per-slice layout is only known after the tower. The placeholder is
  ``ts_0 <|vision_start|> <|video_pad|> * middle <|vision_end|>``: the first timestamp, its vision start and the
  last vision end are always in the same place and stay text; the *middle* (every kept token, plus the
  timestamps and markers of slices 1..T-1 in their real order) is filled by the model after the tower.

A dynamic middle carries ``kept + sum_{t>=1}(len(ts_t) + 2)`` embedding rows. So that no video vanilla vLLM
accepts is refused for the extra text rows, the plugin reports ``text_row_allowance`` more tokens per video to
vLLM's encoder budget, and caps ``kept`` so a middle never exceeds ``unpruned + allowance`` rows (deviation:
a request can keep fewer tokens than its retention asks only for videos with more slices than the processor's
``max_frames`` allows, which vLLM's frame sampler does not produce by default).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from vllm_vtprune.core import PruneConfig, total_budget

# The largest timestamp text the allowance provisions for (about 11.6 days of video).
_LONGEST_TIMESTAMP = 999999.9


@dataclass(frozen=True)
class TokenIds:
    vision_start: int
    vision_end: int
    video_pad: int

    @classmethod
    def from_hf_config(cls, config) -> TokenIds:
        return cls(config.vision_start_token_id, config.vision_end_token_id, config.video_token_id)


def timestamp_text(seconds: float) -> str:
    """Qwen3-VL's timestamp text (``Qwen3VLMultiModalProcessor.get_video_repl``)."""
    return f"<{seconds:.1f} seconds>"


@functools.lru_cache(maxsize=4096)
def _encode(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def timestamp_ids(tokenizer, timestamps: Sequence[float]) -> tuple[tuple[int, ...], ...]:
    """Token ids of each slice's timestamp, encoded one by one as Qwen3-VL does."""
    return tuple(_encode(tokenizer, timestamp_text(float(s))) for s in timestamps)


def known_before_tower(cfg: PruneConfig) -> bool:
    """Whether ``cfg`` decides every kept token before the tower: a pre-tower stage and no post-tower method."""
    return cfg.pre_tower is not None and cfg.method == "none"


def text_row_allowance(tokenizer, max_slices: int) -> int:
    """Extra embedding rows a dynamic middle may need beyond the unpruned pads: the timestamp and markers of
    every slice but the first, for the longest video the processor produces."""
    return max(0, max_slices - 1) * (len(_encode(tokenizer, timestamp_text(_LONGEST_TIMESTAMP))) + 2)


@dataclass(frozen=True)
class VideoLayout:
    """One video's placeholder. ``grid`` is the LLM token grid ``(T, H', W')``; ``kept`` the tokens kept;
    ``cells`` the kept tokens (``t*H'*W' + g``, ascending) when a pre-tower stage chose them."""

    grid: tuple[int, int, int]
    timestamps: tuple[tuple[int, ...], ...]  # token ids of each slice's timestamp
    kept: int
    cells: tuple[int, ...] | None = None

    @property
    def unpruned(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def exact(self) -> bool:
        return self.kept == self.unpruned or self.cells is not None

    def per_slice(self) -> list[int]:
        """Tokens kept by each slice of an exact layout."""
        t, h, w = self.grid
        if self.cells is None:
            return [h * w] * t
        counts = [0] * t
        for cell in self.cells:
            counts[cell // (h * w)] += 1
        return counts

    @property
    def middle_text_rows(self) -> int:
        """Timestamp, vision-start and vision-end rows inside a dynamic middle."""
        return sum(len(ts) + 2 for ts in self.timestamps[1:])

    @property
    def middle_len(self) -> int:
        return self.kept + self.middle_text_rows

    @property
    def prefix_len(self) -> int:
        """Text tokens before the middle: the first timestamp and its vision start."""
        return len(self.timestamps[0]) + 1

    def prompt_ids(self, ids: TokenIds) -> list[int]:
        """The placeholder's token ids. Exact: Qwen3-VL's own. Dynamic: see the module docstring."""
        if self.exact:
            out: list[int] = []
            for ts, count in zip(self.timestamps, self.per_slice()):
                out += [*ts, ids.vision_start, *([ids.video_pad] * count), ids.vision_end]
            return out
        return [*self.timestamps[0], ids.vision_start, *([ids.video_pad] * self.middle_len), ids.vision_end]



def plan_layout(grid: tuple[int, int, int], timestamps: Sequence[float], cfg: PruneConfig, tokenizer,
                allowance: int, cells: Sequence[int] | None = None) -> VideoLayout:
    """The layout of a video of LLM grid ``grid`` under ``cfg``; a pure function of its arguments.

    ``allowance``: extra rows beyond the unpruned count a dynamic middle may take (``text_row_allowance``).
    ``cells``: the tokens a pre-tower stage kept, for a config whose post-tower method is ``none``.
    Raises ValueError when ``cfg`` cannot be met for this grid (caught as HTTP 400 in the API server).
    """
    ts = timestamp_ids(tokenizer, timestamps)
    if len(ts) != grid[0]:
        raise ValueError(f"video has {len(ts)} timestamps for {grid[0]} temporal slices")
    if cells is not None:
        return VideoLayout(grid, ts, len(cells), tuple(cells))
    budget = total_budget(grid, cfg)
    layout = VideoLayout(grid, ts, budget)
    if layout.exact:
        return layout
    kept = min(budget, layout.unpruned + allowance - layout.middle_text_rows)
    if kept < 1:  # the text rows alone exceed what vLLM would accept: keep the video whole
        return VideoLayout(grid, ts, layout.unpruned)
    return VideoLayout(grid, ts, kept)
