"""Synthetic video question answering whose answers need what token pruning can break.

Every item is fully determined by one integer seed: a short clip (mp4, as a user would send it) and a
multiple-choice question with a single-letter answer (``A``-``D``: one token of the tiny tokenizer, which
has no single-token colour or direction words). Five task families, each testing something a pruning
method can lose:

- ``order``: which of a red and a blue object appeared first (temporal order; both stay once they appear);
- ``position``: where a green square is at the end of the clip (left/right/top/bottom; spatial position and
  the last slices);
- ``flash``: the colour of an object visible in only one or two temporal slices (a brief event);
- ``motion``: which way a blue circle moves (left/right/up/down);
- ``count``: how many squares there are (1-4 identical squares, one per token cell: near-duplicate tokens).

Clips vary in length (12, 16, 24 frames at 4 fps: 3, 4, 6 temporal slices after Qwen3-VL's 2-fps sampling;
a temporal slice is 2 consecutive sampled frames), resolution (12-24 LLM tokens per slice) and background
(``static``, ``panning``, ``noisy``). Option order is fixed per family, so the letter is a function of the
video alone. Train and test items come from disjoint seed ranges (:data:`SPLITS`).

CLI: ``python -m vllm_vtprune.testing.video_qa OUT_DIR --split test --count 100`` writes the mp4s and a
``qa.jsonl`` manifest (the harness's dataset format).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vllm_vtprune.testing.videos import _SHAPE_COLORS, _draw_circle, _draw_rect, _scene, write_mp4

FAMILIES = ("order", "position", "flash", "motion", "count")
BACKGROUNDS = ("static", "panning", "noisy")
FPS = 4.0
NUM_FRAMES = (12, 16, 24)
RESOLUTIONS = ((128, 128), (160, 128), (128, 96), (192, 128))  # (width, height): 16, 20, 12, 24 tokens/slice
# Seeds of each split; an item's family is ``FAMILIES[seed % 5]``, so any run of consecutive seeds is balanced.
SPLITS = {"train": range(0, 1_000_000_000), "test": range(1_000_000_000, 2_000_000_000)}
LETTERS = "ABCD"
INSTRUCTION = "Answer with the option's letter."
MANIFEST = "qa.jsonl"

# Qwen3-VL's frame sampler (vLLM's Qwen3VLVideoBackend and HF's Qwen3VLVideoProcessor.sample_frames):
# int(frames / fps * 2) frames, at least 4, evenly spaced with rounding; 2 sampled frames form a slice.
SAMPLE_FPS, MIN_SAMPLED_FRAMES, FRAMES_PER_SLICE = 2.0, 4, 2
TOKEN_PX = 32  # one LLM video token covers 32 x 32 px (16-px patches, 2 x 2 merge); no clip here is resized

COLOR_NAMES = ("red", "green", "blue", "yellow")  # the colours of videos._SHAPE_COLORS, in order
_WHITE = np.array([235, 235, 235], dtype=np.float32)

_QUESTIONS = {
    "order": ("Which appeared first, the red or the blue object?", ("red", "blue")),
    "position": ("Where is the green square at the end of the video?", ("left", "right", "top", "bottom")),
    "flash": ("What colour was the object that flashed briefly?", COLOR_NAMES),
    "motion": ("Which way does the blue circle move?", ("left", "right", "up", "down")),
    "count": ("How many squares are there?", ("1", "2", "3", "4")),
}
# Final-position zones of the ``position`` family: (y range, x range) as fractions of the frame.
_ZONES = {
    "left": ((0.35, 0.65), (0.12, 0.25)),
    "right": ((0.35, 0.65), (0.75, 0.88)),
    "top": ((0.12, 0.25), (0.35, 0.65)),
    "bottom": ((0.75, 0.88), (0.35, 0.65)),
}


def format_prompt(question: str, options: tuple[str, ...] | list[str]) -> str:
    """The user text of a multiple-choice question: question, lettered options, instruction."""
    lines = [question, *(f"{LETTERS[i]}. {option}" for i, option in enumerate(options)), INSTRUCTION]
    return "\n".join(lines)


def sampled_frame_indices(num_frames: int, fps: float = FPS) -> np.ndarray:
    """Indices of the frames Qwen3-VL's 2-fps sampler keeps from a ``num_frames`` clip at ``fps``."""
    count = min(max(int(num_frames / fps * SAMPLE_FPS), MIN_SAMPLED_FRAMES), num_frames)
    return np.linspace(0, num_frames - 1, count).round().astype(int)


@dataclass(frozen=True)
class QAItem:
    seed: int
    family: str
    background: str
    num_frames: int
    width: int
    height: int
    question: str
    options: tuple[str, ...]
    answer: str  # a letter of LETTERS
    truth: dict = field(default_factory=dict, compare=False)  # what the answer derives from, for tests
    fps: float = FPS

    @property
    def prompt(self) -> str:
        return format_prompt(self.question, self.options)

    @property
    def answer_text(self) -> str:
        return self.options[LETTERS.index(self.answer)]


@dataclass
class _Sprite:
    circle: bool
    color: np.ndarray
    half: float  # radius of a circle, half side of a square
    centers: np.ndarray  # [T, 2] (y, x), px
    visible: np.ndarray  # [T] bool


def _static(center, num_frames: int, visible: np.ndarray | None = None, **kw) -> _Sprite:
    centers = np.broadcast_to(np.asarray(center, dtype=np.float64), (num_frames, 2))
    return _Sprite(centers=centers, visible=np.ones(num_frames, bool) if visible is None else visible, **kw)


def _linear(start, end, num_frames: int, stop: int | None = None, **kw) -> _Sprite:
    """From ``start`` to ``end`` at constant speed, arriving at frame ``stop`` (default: the last) and resting."""
    stop = num_frames - 1 if stop is None else stop
    progress = np.clip(np.arange(num_frames) / max(stop, 1), 0.0, 1.0)[:, None]
    centers = np.asarray(start, np.float64) + progress * (np.asarray(end, np.float64) - np.asarray(start))
    return _Sprite(centers=centers, visible=np.ones(num_frames, bool), **kw)


def _place(rng: np.random.Generator, count: int, height: int, width: int, half: float,
           taken: list[np.ndarray] = ()) -> list[np.ndarray]:
    """``count`` centres inside the frame, each at least ~1.5 object sizes from the others (rejection sampling)."""
    centers = list(taken)
    placed = []
    margin = half + 2
    while len(placed) < count:
        c = rng.uniform([margin, margin], [height - margin, width - margin])
        if all(np.abs(c - o).max() >= 3.2 * half for o in centers):
            centers.append(c)
            placed.append(c)
    return placed


def _uniform_in(rng: np.random.Generator, zone, height: int, width: int) -> np.ndarray:
    (y0, y1), (x0, x1) = zone
    return rng.uniform([y0 * height, x0 * width], [y1 * height, x1 * width])


def _order(rng, num_frames, height, width, half, slices):
    first = int(rng.integers(2))  # 0: red first, 1: blue first
    a = int(rng.integers(0, len(slices) - 1))
    b = int(rng.integers(a + 1, len(slices)))
    onset = {first: slices[a][0], 1 - first: slices[b][0]}
    sprites = []
    for which, center in zip((0, 1), _place(rng, 2, height, width, half)):
        visible = np.arange(num_frames) >= onset[which]
        sprites.append(_static(center, num_frames, visible, circle=bool(rng.integers(2)),
                               color=_SHAPE_COLORS[(0, 2)[which]], half=half))
    return sprites, first, {"first_slice": a, "second_slice": b}


def _position(rng, num_frames, height, width, half, slices):
    target = int(rng.integers(4))
    end = _uniform_in(rng, list(_ZONES.values())[target], height, width)
    start = _uniform_in(rng, ((0.2, 0.8), (0.2, 0.8)), height, width)
    stop = int(round(rng.uniform(0.5, 0.8) * (num_frames - 1)))
    square = _linear(start, end, num_frames, stop, circle=False, color=_SHAPE_COLORS[1], half=half)
    path = [_uniform_in(rng, ((0.15, 0.85), (0.15, 0.85)), height, width) for _ in range(2)]
    distractor = _linear(*path, num_frames, circle=True, color=_SHAPE_COLORS[0], half=half)
    return [distractor, square], target, {"end": end.tolist()}


def _flash(rng, num_frames, height, width, half, slices):
    color = int(rng.integers(4))
    length = int(rng.integers(1, 3))
    first = int(rng.integers(0, len(slices) - length + 1))
    shown = range(first, first + length)
    visible = (np.arange(num_frames) >= slices[first][0]) & (np.arange(num_frames) <= slices[shown[-1]][-1])
    flash_at, white_at = _place(rng, 2, height, width, half)
    sprites = [_static(white_at, num_frames, circle=False, color=_WHITE, half=half),
               _static(flash_at, num_frames, visible, circle=True, color=_SHAPE_COLORS[color], half=half)]
    return sprites, color, {"slices": list(shown)}


def _motion(rng, num_frames, height, width, half, slices):
    direction = int(rng.integers(4))  # left, right, up, down
    axis = 1 if direction < 2 else 0  # x for left/right
    extent = (height, width)[axis]
    distance = rng.uniform(0.35, 0.55) * extent
    lo = half + 2
    a = rng.uniform(lo, extent - lo - distance)
    along = (a + distance, a) if direction in (0, 2) else (a, a + distance)  # left/up: decreasing
    across = rng.uniform(0.25, 0.75) * (width, height)[axis]
    start, end = ((across, along[0]), (across, along[1])) if axis == 1 else ((along[0], across), (along[1], across))
    (still,) = _place(rng, 1, height, width, half)
    sprites = [_static(still, num_frames, circle=False, color=_SHAPE_COLORS[3], half=half),
               _linear(start, end, num_frames, circle=True, color=_SHAPE_COLORS[2], half=half)]
    return sprites, direction, {"start": list(start), "end": list(end)}


def _count(rng, num_frames, height, width, half, slices):
    # Each square sits centred in its own LLM token cell, so identical objects make near-identical tokens:
    # exactly what similarity-based pruning merges, and what a count cannot afford to lose.
    count = int(rng.integers(1, 5))
    color = _SHAPE_COLORS[int(rng.integers(4))]
    columns = width // TOKEN_PX
    cells = rng.choice((height // TOKEN_PX) * columns, size=count, replace=False)
    centers = [((c // columns + 0.5) * TOKEN_PX, (c % columns + 0.5) * TOKEN_PX) for c in cells]
    half = min(half, 0.375 * TOKEN_PX)  # 8 px or more between squares in neighbouring cells
    sprites = [_static(c, num_frames, circle=False, color=color, half=half) for c in centers]
    return sprites, count - 1, {"count": count}


_FAMILY_SPRITES = {"order": _order, "position": _position, "flash": _flash, "motion": _motion, "count": _count}


def _muted_scene(rng: np.random.Generator, height: int, width: int, unit: int) -> np.ndarray:
    """A textured scene with its colour saturation cut to a third, so that the saturated objects stand out."""
    scene = _scene(rng, height, width, unit, num_shapes=0)
    grey = scene.mean(axis=2, keepdims=True)
    return grey + (scene - grey) / 3


def _background(rng: np.random.Generator, kind: str, num_frames: int, height: int, width: int) -> np.ndarray:
    unit = min(height, width)
    if kind == "panning":
        step = int(rng.integers(1, 4))  # px per frame
        scene = _muted_scene(rng, height, width + step * (num_frames - 1), unit)
        if rng.integers(2):
            scene = scene[:, ::-1]
        return np.stack([scene[:, t * step : t * step + width] for t in range(num_frames)])
    frames = np.repeat(_muted_scene(rng, height, width, unit)[None], num_frames, axis=0)
    if kind == "noisy":
        frames += rng.normal(0.0, 10.0, size=frames.shape).astype(np.float32)
    return frames


def generate(seed: int) -> tuple[QAItem, np.ndarray]:
    """One item and its RGB ``uint8 [T, H, W, 3]`` frames; the same seed always gives the same bytes."""
    rng = np.random.default_rng([seed, 0x51A])
    family = FAMILIES[seed % len(FAMILIES)]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    num_frames = int(rng.choice(NUM_FRAMES))
    width, height = RESOLUTIONS[int(rng.integers(len(RESOLUTIONS)))]
    half = float(rng.uniform(0.08, 0.1) * min(height, width))
    slices = sampled_frame_indices(num_frames).reshape(-1, FRAMES_PER_SLICE)
    sprites, answer, truth = _FAMILY_SPRITES[family](rng, num_frames, height, width, half, slices)

    frames = _background(rng, background, num_frames, height, width)
    for t in range(num_frames):
        for s in sprites:
            if s.visible[t]:
                (_draw_circle if s.circle else _draw_rect)(frames[t], *s.centers[t], s.half, s.color)
    question, options = _QUESTIONS[family]
    item = QAItem(seed=seed, family=family, background=background, num_frames=num_frames, width=width,
                  height=height, question=question, options=options, answer=LETTERS[answer], truth=truth)
    return item, np.clip(np.round(frames), 0, 255).astype(np.uint8)


def split_seeds(split: str, count: int, start: int = 0) -> range:
    """``count`` consecutive seeds of ``split`` from its ``start``-th."""
    seeds = SPLITS[split]
    if start < 0 or start + count > len(seeds):
        raise ValueError(f"{split} has {len(seeds)} seeds; asked for [{start}, {start + count})")
    return seeds[start : start + count]


def video_path(out_dir: Path, item: QAItem) -> Path:
    return out_dir / f"{item.family}_{item.seed}.mp4"


def write_qa_set(out_dir: str | Path, split: str, count: int, start: int = 0) -> Path:
    """Write ``count`` items of ``split`` as mp4 files plus a ``qa.jsonl`` manifest; returns the manifest.

    Files already there are reused (their names carry the seed, and a seed always renders the same clip).
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in split_seeds(split, count, start):
        item, frames = generate(seed)
        path = video_path(out, item)
        if not path.exists():
            tmp = out / f".{path.stem}.{os.getpid()}.tmp.mp4"  # rename: a concurrent reader never sees half a file
            write_mp4(frames, tmp, item.fps)
            os.replace(tmp, path)
        record = {"id": item.seed, "video": path.name, "question": item.question, "options": list(item.options),
                  "answer": item.answer, "task": item.family}
        records.append(record | {"meta": {k: v for k, v in asdict(item).items() if k not in record}})
    manifest = out / MANIFEST
    tmp = manifest.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic video-QA set (mp4 files + qa.jsonl).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--split", choices=tuple(SPLITS), default="test")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_qa_set(args.out_dir, args.split, args.count, args.start))


if __name__ == "__main__":
    main()
