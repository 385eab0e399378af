"""Synthetic videos: deterministic, with the temporal structure each kind promises, and valid mp4 files."""

import base64
from pathlib import Path

import numpy as np
import pytest

from vllm_vtprune.testing.videos import (
    KINDS,
    iter_frames,
    make_frames,
    mp4_data_url,
    read_mp4,
    video_suite,
    write_mp4,
)

T, W, H = 32, 256, 256


def _consecutive_diffs(frames: np.ndarray) -> np.ndarray:
    """Mean absolute difference between frames t and t+1, per t."""
    return np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))


@pytest.mark.parametrize("kind", KINDS)
def test_frames_are_deterministic_and_well_formed(kind: str) -> None:
    frames = make_frames(kind, num_frames=7, width=200, height=120, seed=3)
    assert frames.shape == (7, 120, 200, 3) and frames.dtype == np.uint8
    assert frames.tobytes() == make_frames(kind, num_frames=7, width=200, height=120, seed=3).tobytes()
    assert not np.array_equal(frames, make_frames(kind, num_frames=7, width=200, height=120, seed=4))
    assert frames.std() > 20  # textured, not flat


def test_near_static_changes_by_at_most_one_level_outside_a_dot() -> None:
    frames = make_frames("near_static", T, W, H)
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(axis=3)
    assert _consecutive_diffs(frames).max() <= 1.01
    # Only the tiny dot (radius 1.5 px: a handful of pixels) moves by more than the flicker.
    assert ((diffs > 1).sum(axis=(1, 2)) <= 20).all()
    assert (diffs > 1).any(axis=(1, 2)).all()


def test_moving_objects_move_over_a_static_background() -> None:
    frames = make_frames("moving_objects", T, W, H)
    diffs = _consecutive_diffs(frames)
    assert (diffs > 0.2).all() and (diffs < 8).all()
    never_changes = (frames == frames[0]).all(axis=(0, 3))
    assert never_changes.mean() > 0.5  # most of the background is untouched all clip long


def test_scene_cut_has_one_spike_at_the_cut() -> None:
    frames = make_frames("scene_cut", T, W, H)
    diffs = _consecutive_diffs(frames)
    cut = T // 2
    assert diffs.argmax() == cut - 1
    assert diffs[cut - 1] > 20
    assert diffs[cut - 1] > 10 * np.delete(diffs, cut - 1).max()
    assert (np.delete(diffs, cut - 1) > 0).all()  # mild motion inside each scene


def test_slow_pan_shifts_content_by_the_pan_step() -> None:
    frames = make_frames("slow_pan", T, W, H)
    step = 2  # px per frame at 256 px width
    for t in range(T - 1):
        assert np.array_equal(frames[t + 1][:, : W - step], frames[t][:, step:])
        assert not np.array_equal(frames[t + 1], frames[t])


@pytest.mark.parametrize("kind", KINDS)
def test_frames_one_at_a_time_are_the_same_frames(kind: str, tmp_path: Path) -> None:
    frames = make_frames(kind, num_frames=9, width=66, height=40, seed=2)
    assert np.array_equal(np.stack(list(iter_frames(kind, 9, 66, 40, seed=2))), frames)
    from_iterable = write_mp4(iter_frames(kind, 9, 66, 40, seed=2), tmp_path / "a.mp4", fps=4.0)
    assert from_iterable.read_bytes() == write_mp4(frames, tmp_path / "b.mp4", fps=4.0).read_bytes()


def test_mp4_round_trip(tmp_path: Path) -> None:
    frames = make_frames("moving_objects", 12, 160, 96)
    path = write_mp4(frames, tmp_path / "clip.mp4", fps=4.0)
    decoded = read_mp4(path)
    assert decoded.shape == frames.shape
    # Lossy codec, but the same pictures in the same order.
    errors = np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).mean(axis=(1, 2, 3))
    assert errors.max() < 6
    assert np.abs(decoded[0].astype(np.int16) - frames[-1].astype(np.int16)).mean() > errors[0]


def test_video_suite_reuses_files_and_makes_data_urls(tmp_path: Path) -> None:
    suite = video_suite(tmp_path, num_frames=8, width=128, height=96, fps=2.0)
    assert set(suite) == set(KINDS)
    mtimes = {kind: path.stat().st_mtime_ns for kind, path in suite.items()}
    assert video_suite(tmp_path, num_frames=8, width=128, height=96, fps=2.0) == suite
    assert {kind: path.stat().st_mtime_ns for kind, path in suite.items()} == mtimes
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in suite.values()}  # no temp files left
    assert read_mp4(suite["slow_pan"]).shape == (8, 96, 128, 3)

    url = mp4_data_url(suite["scene_cut"])
    prefix = "data:video/mp4;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix) :]) == suite["scene_cut"].read_bytes()
