"""The synthetic video QA: deterministic, split by seed, and each answer really is in the frames vLLM samples."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import cv2
import numpy as np
import pytest

from vllm_vtprune.testing import qa_inputs
from vllm_vtprune.testing.tiny_qwen3vl import _train_tokenizer
from vllm_vtprune.testing.video_qa import (
    _SHAPE_COLORS,
    _ZONES,
    COLOR_NAMES,
    FAMILIES,
    LETTERS,
    NUM_FRAMES,
    SPLITS,
    generate,
    sampled_frame_indices,
    split_seeds,
    write_qa_set,
)


def _first_seeds(family: str, count: int, split: str = "test") -> list[int]:
    seeds = split_seeds(split, 5 * count)
    return [s for s in seeds if FAMILIES[s % len(FAMILIES)] == family]


def _served_frames(seed: int) -> tuple[object, np.ndarray]:
    """The item and the frames vLLM's loader samples from its mp4 (compressed, as served)."""
    item, frames = generate(seed)
    sampled, _ = qa_inputs.load_like_vllm(qa_inputs.mp4_bytes(frames, item.fps))
    return item, sampled


def _mask(frames: np.ndarray, color: np.ndarray, tol: float = 60.0) -> np.ndarray:
    """Pixels within ``tol`` (L2, RGB) of a saturated object colour: [T, H, W] bool."""
    return np.linalg.norm(frames.astype(np.float32) - color, axis=-1) < tol


def test_same_seed_same_item_and_bytes():
    for seed in (0, 7, 1_000_000_003):
        a_item, a = generate(seed)
        b_item, b = generate(seed)
        assert a_item == b_item and a_item.truth == b_item.truth
        assert a.tobytes() == b.tobytes()
    assert generate(1)[1].tobytes() != generate(6)[1].tobytes()  # same family, another seed


def test_splits_are_disjoint_and_bounded():
    train, test = SPLITS["train"], SPLITS["test"]
    assert train.stop <= test.start
    digests = {split: {hashlib.sha1(generate(s)[1].tobytes()).hexdigest() for s in split_seeds(split, 40)}
               for split in ("train", "test")}
    assert len(digests["train"]) == len(digests["test"]) == 40
    assert not digests["train"] & digests["test"]
    with pytest.raises(ValueError):
        split_seeds("test", 10, start=len(test) - 5)


def test_families_balanced_answers_spread_and_varied_clips():
    items = [generate(s)[0] for s in split_seeds("train", 400)]
    assert Counter(i.family for i in items) == {f: 80 for f in FAMILIES}
    for family in FAMILIES:
        letters = Counter(i.answer for i in items if i.family == family)
        num_options = len(next(i for i in items if i.family == family).options)
        assert set(letters) == set(LETTERS[:num_options])
        assert min(letters.values()) >= 80 / num_options / 2  # roughly uniform: no letter is a free win
    assert {i.background for i in items} == {"static", "panning", "noisy"}
    assert {i.num_frames for i in items} == set(NUM_FRAMES)
    assert len({(i.width, i.height) for i in items}) == 4


def test_answers_and_prompts_tokenize_cleanly():
    tok = _train_tokenizer()
    for letter in LETTERS:
        assert tok.encode(letter).ids == [tok.token_to_id(letter)]  # one token each
    item, _ = generate(3)
    assert item.prompt.splitlines()[0] == item.question
    assert item.prompt.splitlines()[1:-1] == [f"{L}. {o}" for L, o in zip(LETTERS, item.options)]


@pytest.mark.parametrize("num_frames", NUM_FRAMES)
def test_frame_sampler_matches_vllms_loader(num_frames):
    frames = np.zeros((num_frames, 64, 64, 3), np.uint8)
    sampled, metadata = qa_inputs.load_like_vllm(qa_inputs.mp4_bytes(frames, 4.0))
    assert metadata["frames_indices"] == sampled_frame_indices(num_frames).tolist()
    assert len(sampled) == len(metadata["frames_indices"]) and len(sampled) % 2 == 0


def _slice_presence(sampled: np.ndarray, color: np.ndarray, min_pixels: int = 30) -> list[bool]:
    """Per temporal slice (2 sampled frames): does the colour cover at least ``min_pixels`` in both frames?"""
    counts = _mask(sampled, color).sum(axis=(1, 2)).reshape(-1, 2)
    return [bool(c.min() >= min_pixels) for c in counts]


def test_flash_is_visible_in_exactly_its_slices():
    for seed in _first_seeds("flash", 12):
        item, sampled = _served_frames(seed)
        color = _SHAPE_COLORS[COLOR_NAMES.index(item.answer_text)]
        present = _slice_presence(sampled, color)
        assert [i for i, p in enumerate(present) if p] == item.truth["slices"], seed
        counts = _mask(sampled, color).sum(axis=(1, 2)).reshape(-1, 2)
        absent = [i for i in range(len(counts)) if i not in item.truth["slices"]]
        assert (counts[absent] < 5).all(), seed  # not even partly visible elsewhere


def test_order_objects_appear_in_their_slices_and_stay():
    for seed in _first_seeds("order", 12):
        item, sampled = _served_frames(seed)
        first = ("red", "blue").index(item.answer_text)
        onsets = {first: item.truth["first_slice"], 1 - first: item.truth["second_slice"]}
        for which, color in enumerate((_SHAPE_COLORS[0], _SHAPE_COLORS[2])):
            present = _slice_presence(sampled, color)
            assert present == [i >= onsets[which] for i in range(len(present))], seed


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([ys.mean(), xs.mean()])


def test_position_square_ends_in_the_answer_zone():
    for seed in _first_seeds("position", 12):
        item, sampled = _served_frames(seed)
        center = _centroid(_mask(sampled[-1], _SHAPE_COLORS[1]))
        (y0, y1), (x0, x1) = _ZONES[item.answer_text]
        assert y0 * item.height - 2 <= center[0] <= y1 * item.height + 2, seed
        assert x0 * item.width - 2 <= center[1] <= x1 * item.width + 2, seed


def test_motion_goes_the_answer_way():
    step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    for seed in _first_seeds("motion", 12):
        item, sampled = _served_frames(seed)
        moved = _centroid(_mask(sampled[-1], _SHAPE_COLORS[2])) - _centroid(_mask(sampled[0], _SHAPE_COLORS[2]))
        along = np.dot(moved, step[item.answer_text])
        assert along > 0.3 * min(item.width, item.height), seed  # most of the motion is the answer's way
        assert along > 3 * abs(np.dot(moved, step[item.answer_text][::-1])), seed


def test_count_is_the_number_of_squares():
    for seed in _first_seeds("count", 12):
        item, sampled = _served_frames(seed)
        masks = [_mask(sampled[0], c) for c in _SHAPE_COLORS]
        mask = max(masks, key=lambda m: m.sum()).astype(np.uint8)
        num_labels, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        blobs = [s for s in stats[1:] if s[cv2.CC_STAT_AREA] >= 30]
        assert len(blobs) == int(item.answer_text), seed


def test_write_qa_set_writes_playable_clips_and_a_manifest(tmp_path):
    manifest = write_qa_set(tmp_path, "test", 5)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in records] == list(split_seeds("test", 5))
    for record in records:
        item, frames = generate(record["id"])
        assert (record["question"], tuple(record["options"]), record["answer"], record["task"]) == \
            (item.question, item.options, item.answer, item.family)
        sampled, metadata = qa_inputs.load_like_vllm((tmp_path / record["video"]).read_bytes())
        assert metadata["total_num_frames"] == item.num_frames and metadata["fps"] == pytest.approx(item.fps)
        assert sampled.shape[1:3] == (item.height, item.width)
    mtimes = [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("*.mp4"))]
    write_qa_set(tmp_path, "test", 5)
    assert [p.stat().st_mtime_ns for p in sorted(tmp_path.glob("*.mp4"))] == mtimes  # reused, not rewritten
