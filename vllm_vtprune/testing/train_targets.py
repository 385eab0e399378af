"""Auxiliary training targets for the tiny video-QA model, read from the sampled frames themselves.

A randomly initialised tiny Qwen3-VL given only the answer letter stays at chance for thousands of steps:
one token of supervision per clip is too weak a signal to discover which of ~100 video tokens matter. Two
dense, question-independent auxiliary losses bootstrap it (their heads are discarded after training):

- per LLM video token, on the vision tower's merged output: the object colour covering the token, the
  direction that object moves within the token's temporal slice, and the token's (row, column);
- per clip, at the answer position (the LLM's last hidden state): which colours each temporal slice holds,
  and each colour's centroid and object count in the first and the last sampled frame.

Everything is computed from pixels (object colours are saturated, backgrounds muted), so the targets hold
for any clip of :mod:`vllm_vtprune.testing.video_qa` without access to the generator's internals.
"""

from __future__ import annotations

import numpy as np
import torch

from vllm_vtprune.testing.video_qa import _SHAPE_COLORS, _WHITE

OBJECT_COLORS = np.concatenate([_SHAPE_COLORS, _WHITE[None]])
NUM_COLORS = len(OBJECT_COLORS)
MAX_SLICES = 6  # the longest clips of the generator
MOTIONS = ("still", "left", "right", "up", "down")
TOKEN_OUTPUTS = (NUM_COLORS + 1) + len(MOTIONS) + 2  # colour logits, motion logits, (row, column)
SUMMARY_SIZE = MAX_SLICES * NUM_COLORS + 2 * 3 * NUM_COLORS
_MIN_OBJECT_PIXELS = 30
_COLOR_DISTANCE = 60.0
_MIN_MOTION_PX = 1.0  # centroid shift between a slice's two frames that counts as motion


def color_classes(frames: np.ndarray) -> np.ndarray:
    """Per pixel of ``[F, H, W, 3]`` frames: 1 + index of the object colour it is close to, or 0 (background)."""
    dist = np.linalg.norm(frames[..., None, :].astype(np.float32) - OBJECT_COLORS, axis=-1)  # [F, H, W, C]
    return np.where(dist.min(-1) < _COLOR_DISTANCE, dist.argmin(-1) + 1, 0)


def _centroids(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame and colour: centroid ``[F, C, 2]`` (y, x in px) and pixel count ``[F, C]``."""
    onehot = classes[..., None] == np.arange(1, NUM_COLORS + 1)  # [F, H, W, C]
    count = onehot.sum((1, 2))
    ys = np.einsum("fhwc,h->fc", onehot, np.arange(classes.shape[1], dtype=np.float64))
    xs = np.einsum("fhwc,w->fc", onehot, np.arange(classes.shape[2], dtype=np.float64))
    return np.stack([ys, xs], -1) / np.maximum(count, 1)[..., None], count


def _slice_motion(classes: np.ndarray) -> np.ndarray:
    """Per temporal slice and colour, the index in MOTIONS of how the colour moves between the slice's frames."""
    centroid, count = _centroids(classes)
    shift = centroid[1::2] - centroid[0::2]  # [S, C, 2]
    seen = (count[0::2] >= _MIN_OBJECT_PIXELS) & (count[1::2] >= _MIN_OBJECT_PIXELS)
    horizontal = np.abs(shift[..., 1]) >= np.abs(shift[..., 0])
    direction = np.where(horizontal, np.where(shift[..., 1] < 0, 1, 2), np.where(shift[..., 0] < 0, 3, 4))
    return np.where(seen & (np.abs(shift).max(-1) >= _MIN_MOTION_PX), direction, 0)


def token_targets(classes: np.ndarray, grid_thw: list[int], merge: int = 2,
                  min_share: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Per LLM video token (the tower's output order): colour class (0 = background; a token is covered by
    a colour from ``min_share`` of its pixels over its slice's two frames) and motion class."""
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    f, height, width = classes.shape
    rows = np.arange(height) * h // height
    cols = np.arange(width) * w // width
    token = ((np.arange(f) // 2)[:, None, None] * h + rows[None, :, None]) * w + cols[None, None, :]
    counts = np.bincount((token * (NUM_COLORS + 1) + classes).ravel(), minlength=t * h * w * (NUM_COLORS + 1))
    objects = counts.reshape(t * h * w, NUM_COLORS + 1)[:, 1:]
    covered = objects.max(1) >= min_share * counts.reshape(t * h * w, -1).sum(1)
    color = np.where(covered, objects.argmax(1) + 1, 0)
    motion = _slice_motion(classes)  # [S, C]
    slice_of = np.arange(t * h * w) // (h * w)
    token_motion = np.where(color > 0, motion[slice_of, np.maximum(color - 1, 0)], 0)
    return torch.from_numpy(color), torch.from_numpy(token_motion)


def token_coords(grid_thw: torch.Tensor, merge: int = 2) -> torch.Tensor:
    """(row, column) in [0, 1] of every LLM video token of a batch, in the tower's output order."""
    coords = []
    for t, h, w in (grid_thw // torch.tensor([1, merge, merge])).tolist():
        rows = torch.arange(h).float().div(max(h - 1, 1)).repeat_interleave(w)
        cols = torch.arange(w).float().div(max(w - 1, 1)).repeat(h)
        coords.append(torch.stack([rows, cols], 1).repeat(t, 1))
    return torch.cat(coords)


def _object_counts(classes: np.ndarray) -> np.ndarray:
    """Separate objects of each colour in one frame (connected components of at least 30 px)."""
    import cv2

    counts = np.zeros(NUM_COLORS, np.float32)
    for c in range(NUM_COLORS):  # five tiny masks: a loop over colours, not over pixels
        _, _, stats, _ = cv2.connectedComponentsWithStats((classes == c + 1).astype(np.uint8))
        counts[c] = (stats[1:, cv2.CC_STAT_AREA] >= _MIN_OBJECT_PIXELS).sum()
    return counts


def clip_summary(classes: np.ndarray, colors: torch.Tensor, grid_thw: list[int],
                 merge: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-clip target (``SUMMARY_SIZE`` values) and the mask of its defined entries: colour presence per
    slice (bits; slices past the clip's end masked), then for the first and the last sampled frame each
    colour's centroid (y, x in [0, 1]) and object count / 4 (masked where the colour is absent)."""
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    presence = torch.zeros(MAX_SLICES, NUM_COLORS)
    presence[:t] = torch.nn.functional.one_hot(colors.view(t, h * w), NUM_COLORS + 1)[..., 1:].amax(1).float()
    presence_mask = torch.zeros(MAX_SLICES, NUM_COLORS)
    presence_mask[:t] = 1.0
    ends = classes[[0, -1]]
    centroid, count = _centroids(ends)
    size = np.array(classes.shape[1:3], np.float64)
    facts = np.concatenate([centroid / size, np.stack([_object_counts(c) for c in ends])[..., None] / 4], -1)
    present = np.repeat((count >= _MIN_OBJECT_PIXELS)[..., None], 3, -1)
    return (torch.cat([presence.flatten(), torch.from_numpy(facts).float().flatten()]),
            torch.cat([presence_mask.flatten(), torch.from_numpy(present).float().flatten()]))


def token_loss(out: torch.Tensor, colors: torch.Tensor, motions: torch.Tensor,
               coords: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on colour and motion (motion only where an object is), squared error x4 on the position."""
    c, m = NUM_COLORS + 1, len(MOTIONS)
    loss = torch.nn.functional.cross_entropy(out[:, :c], colors)
    objects = colors > 0
    if objects.any():
        loss = loss + torch.nn.functional.cross_entropy(out[objects, c : c + m], motions[objects])
    return loss + 4 * torch.nn.functional.mse_loss(out[:, c + m :], coords)


def summary_loss(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on the presence bits, squared error x4 on centroids and counts, both masked."""
    bits = MAX_SLICES * NUM_COLORS
    bce = torch.nn.functional.binary_cross_entropy_with_logits(predicted[:, :bits], target[:, :bits],
                                                             reduction="none")
    per = torch.cat([bce, 4 * (predicted[:, bits:] - target[:, bits:]) ** 2], 1) * mask
    return per.sum() / mask.sum().clamp(min=1)
