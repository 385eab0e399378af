"""The auxiliary training targets say what the clip shows, token by token, in the tower's output order."""

from __future__ import annotations

import numpy as np
import torch

from vllm_vtprune.testing import qa_inputs
from vllm_vtprune.testing.train_targets import (
    MAX_SLICES,
    MOTIONS,
    NUM_COLORS,
    clip_summary,
    color_classes,
    token_coords,
    token_targets,
)
from vllm_vtprune.testing.video_qa import COLOR_NAMES, FAMILIES, TOKEN_PX, generate


def _served(seed: int):
    item, frames = generate(seed)
    sampled, _ = qa_inputs.load_like_vllm(qa_inputs.mp4_bytes(frames, item.fps))
    grid = [len(sampled) // 2, item.height // TOKEN_PX * 2, item.width // TOKEN_PX * 2]  # patches, as the processor
    return item, sampled, grid


def _seeds(family: str, count: int = 8) -> list[int]:
    return [s for s in range(5 * count) if FAMILIES[s % 5] == family]


def test_count_squares_each_cover_one_token_of_their_colour():
    for seed in _seeds("count"):
        item, sampled, grid = _served(seed)
        colors, motions = token_targets(color_classes(sampled), grid)
        per_slice = colors.view(grid[0], -1)
        assert ((per_slice > 0).sum(1) == int(item.answer_text)).all(), seed
        assert len(set(per_slice[per_slice > 0].tolist())) == 1  # one colour
        assert (motions == 0).all()  # static squares


def test_motion_tokens_carry_the_answer_direction():
    blue = COLOR_NAMES.index("blue") + 1
    for seed in _seeds("motion"):
        item, sampled, grid = _served(seed)
        colors, motions = token_targets(color_classes(sampled), grid)
        moving = motions[colors == blue]
        assert (moving == MOTIONS.index(item.answer_text)).float().mean() > 0.8, seed


def test_summary_marks_the_flash_slices_and_masks_missing_ones():
    for seed in _seeds("flash"):
        item, sampled, grid = _served(seed)
        classes = color_classes(sampled)
        colors, _ = token_targets(classes, grid)
        target, mask = clip_summary(classes, colors, grid)
        presence = target[: MAX_SLICES * NUM_COLORS].view(MAX_SLICES, NUM_COLORS)
        flash = COLOR_NAMES.index(item.answer_text)
        assert presence[:, flash].nonzero().flatten().tolist() == item.truth["slices"], seed
        assert (mask[: MAX_SLICES * NUM_COLORS].view(MAX_SLICES, NUM_COLORS).sum(1) > 0).sum() == grid[0]


def test_summary_centroids_follow_the_position_answer():
    green = COLOR_NAMES.index("green")
    for seed in _seeds("position"):
        item, sampled, grid = _served(seed)
        classes = color_classes(sampled)
        target, mask = clip_summary(classes, token_targets(classes, grid)[0], grid)
        last = target[MAX_SLICES * NUM_COLORS:].view(2, NUM_COLORS, 3)[1, green]
        assert mask[MAX_SLICES * NUM_COLORS:].view(2, NUM_COLORS, 3)[1, green].all()
        y, x = (np.array(item.truth["end"]) / [item.height, item.width]).tolist()
        assert abs(last[0] - y) < 0.05 and abs(last[1] - x) < 0.05, seed


def test_token_coords_order_matches_the_grid():
    coords = token_coords(torch.tensor([[2, 6, 8], [1, 4, 4]]))
    assert coords.shape == (2 * 3 * 4 + 2 * 2, 2)
    assert torch.allclose(coords[:4, 1], torch.tensor([0, 1 / 3, 2 / 3, 1])) and (coords[:4, 0] == 0).all()
    assert (coords[4:8, 0] == 0.5).all()  # row-major: the second row of 4 tokens
    assert coords[12:24].equal(coords[:12])  # the second slice repeats the grid
