"""Deterministic synthetic videos with real temporal structure, for tests, demos and benchmarks.

Pruning and feature reuse only pay off when consecutive frames are redundant, and i.i.d. noise frames
(vLLM's ``random-mm`` benchmark data) have no redundancy at all. These clips do: a textured static
background built from low-frequency patterns (gradients, sinusoidal gratings, a few flat shapes), with
motion that is known exactly.

Kinds (see :func:`make_frames`):

- ``moving_objects``: static background, three coloured shapes on smooth periodic paths.
- ``slow_pan``: a wider scene panned horizontally by a whole number of pixels per frame.
- ``scene_cut``: one scene for the first half, a different scene after; each with one slowly moving shape.
- ``near_static``: static scene, a brightness flicker of one grey level and one tiny dot moving 1 px per frame.

CLI: ``python -m vllm_vtprune.testing.videos OUT_DIR`` writes the suite and prints the paths.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

KINDS = ("moving_objects", "slow_pan", "scene_cut", "near_static")

# Colours far from typical background values, so moving shapes stand out.
_SHAPE_COLORS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 235], [245, 220, 40]], dtype=np.float32)


def _scene(rng: np.random.Generator, height: int, width: int, unit: int, num_shapes: int = 4) -> np.ndarray:
    """A smooth textured RGB scene (float32, 0..255); ``unit`` px is the texture's reference scale.

    ``num_shapes`` flat static shapes give the background edges and corners (0 for a scene whose only
    objects are the ones a caller draws, e.g. the QA clips).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / unit
    # Diagonal gradient between two random colours.
    c0, c1 = rng.uniform(40, 215, size=(2, 3)).astype(np.float32)
    ramp = ((xx + yy) / max((height + width) / unit, 1e-6))[..., None]
    img = c0 + (c1 - c0) * ramp
    # Low-frequency gratings: 1-4 cycles per `unit`, random orientation and phase, per-channel amplitude.
    for _ in range(4):
        freq = rng.uniform(1.0, 4.0)
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        img += wave[..., None] * rng.uniform(-18, 18, size=3).astype(np.float32)
    for _ in range(num_shapes):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        size = rng.uniform(0.06, 0.15) * unit
        color = rng.uniform(0, 255, size=3).astype(np.float32)
        if rng.random() < 0.5:
            _draw_rect(img, cy, cx, size, color)
        else:
            _draw_circle(img, cy, cx, size, color)
    return np.clip(img, 0, 255)


def _draw_circle(img: np.ndarray, cy: float, cx: float, radius: float, color: np.ndarray) -> None:
    h, w = img.shape[:2]
    y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, h)
    x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = color


def _draw_rect(img: np.ndarray, cy: float, cx: float, half: float, color: np.ndarray) -> None:
    h, w = img.shape[:2]
    y0, y1 = max(round(cy - half), 0), min(round(cy + half), h)
    x0, x1 = max(round(cx - half), 0), min(round(cx + half), w)
    img[y0:y1, x0:x1] = color


def _shape_paths(rng: np.random.Generator, height: int, width: int, num_shapes: int, speed: float) -> list[dict]:
    """Shapes on smooth Lissajous paths; ``speed`` scales the angular rate."""
    unit = min(height, width)
    return [
        {
            "center": rng.uniform([0.3 * height, 0.3 * width], [0.7 * height, 0.7 * width]),
            "amp": rng.uniform(0.1, 0.25, size=2) * unit,
            "period": rng.uniform(30, 50, size=2) / speed,  # in frames
            "phase": rng.uniform(0, 2 * np.pi, size=2),
            "size": rng.uniform(0.05, 0.08) * unit,
            "color": _SHAPE_COLORS[i % len(_SHAPE_COLORS)],
            "circle": i % 2 == 0,
        }
        for i in range(num_shapes)
    ]


def _shapes_frame(background: np.ndarray, shapes: list[dict], t: int) -> np.ndarray:
    frame = background.copy()
    for s in shapes:
        cy, cx = s["center"] + s["amp"] * np.sin(2 * np.pi * t / s["period"] + s["phase"])
        draw = _draw_circle if s["circle"] else _draw_rect
        draw(frame, cy, cx, s["size"], s["color"])
    return frame


def _pan_step(width: int) -> int:
    """Horizontal pan per frame: 2 px for a 256 px wide frame, at least 1."""
    return max(1, width // 128)


def iter_frames(kind: str, num_frames: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The frames of :func:`make_frames`, one ``uint8 [height, width, 3]`` array at a time (long, large clips
    without holding them in memory). Every random draw happens before the first frame."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])  # a separate stream per kind
    unit = min(height, width)
    if kind == "moving_objects":
        background = _scene(rng, height, width, unit)
        shapes = _shape_paths(rng, height, width, num_shapes=3, speed=1.0)
        frames = (_shapes_frame(background, shapes, t) for t in range(num_frames))
    elif kind == "slow_pan":
        step = _pan_step(width)
        scene = _scene(rng, height, width + step * (num_frames - 1), unit)
        frames = (scene[:, t * step : t * step + width] for t in range(num_frames))
    elif kind == "scene_cut":
        cut = num_frames // 2
        first = (_scene(rng, height, width, unit), _shape_paths(rng, height, width, num_shapes=1, speed=0.5))
        second = (_scene(rng, height, width, unit), _shape_paths(rng, height, width, num_shapes=1, speed=0.5))
        frames = (_shapes_frame(*first, t) if t < cut else _shapes_frame(*second, t - cut) for t in range(num_frames))
    else:  # near_static
        scene = np.round(_scene(rng, height, width, unit))  # quantise first: the flicker adds whole levels
        flicker = rng.integers(0, 2, size=num_frames).astype(np.float32)  # +0 or +1 grey level
        y, x0 = rng.uniform(0.2 * height, 0.8 * height), rng.uniform(0.2 * width, 0.5 * width)
        frames = (_dot_frame(scene, flicker[t], y, (x0 + t) % width) for t in range(num_frames))
    return (np.round(f).astype(np.uint8) for f in frames)


def _dot_frame(scene: np.ndarray, flicker: float, y: float, x: float) -> np.ndarray:
    frame = np.clip(scene + flicker, 0, 255)
    _draw_circle(frame, y, x, 1.5, _SHAPE_COLORS[3])
    return frame


def make_frames(kind: str, num_frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Frames of one synthetic clip, ``uint8 [num_frames, height, width, 3]`` (RGB), fully determined by the args."""
    return np.stack(list(iter_frames(kind, num_frames, width, height, seed)))


def write_mp4(frames: np.ndarray | Iterable[np.ndarray], path: str | Path, fps: float) -> Path:
    """Encode RGB ``uint8 [T, H, W, 3]`` frames (an array, or an iterable of ``[H, W, 3]`` frames) as an
    MPEG-4 Part 2 (``mp4v``) file, as vLLM's benchmarks do."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write mp4v video to {path}")
    try:
        for frame in itertools.chain([first], frames):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file to RGB ``uint8 [T, H, W, 3]``."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise RuntimeError(f"OpenCV cannot open {path}")
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise RuntimeError(f"no frames decoded from {path}")
    return np.stack(frames)


def video_suite(
    out_dir: str | Path,
    *,
    num_frames: int = 32,
    width: int = 256,
    height: int = 256,
    fps: float = 4.0,
    seed: int = 0,
) -> dict[str, Path]:
    """One mp4 per kind in ``out_dir``; files already there (same parameters, encoded in the name) are reused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in KINDS:
        path = out / f"{kind}_s{seed}_{num_frames}f_{width}x{height}_{fps:g}fps.mp4"
        if not path.exists():
            # Write then rename, so a concurrent reader never sees a half-written file.
            tmp = out / f".{path.stem}.{os.getpid()}.tmp.mp4"
            write_mp4(make_frames(kind, num_frames, width, height, seed), tmp, fps)
            os.replace(tmp, path)
        paths[kind] = path
    return paths


def mp4_data_url(path: str | Path) -> str:
    """The file as a ``data:video/mp4;base64,...`` URL, for an OpenAI-style ``video_url`` content part."""
    return "data:video/mp4;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic video suite (one mp4 per kind).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--fps", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    suite = video_suite(
        args.out_dir,
        num_frames=args.frames,
        width=args.width,
        height=args.height,
        fps=args.fps,
        seed=args.seed,
    )
    for kind, path in suite.items():
        print(f"{kind}\t{path}")


if __name__ == "__main__":
    main()
