"""Micro-benchmark: token-selection time per method against the vision-tower time for the same video.

Selection runs through ``select_tokens`` (the driver and its contract checks included) on random post-merger
features of T slices x 256 tokens (a 16x16 grid: 512x512 px frames) at retention 0.25. The tower is transformers'
``Qwen3VLVisionModel`` with random weights built from the benchmark config
(``vllm_vtprune.testing.tiny_qwen3vl.scaled_config().vision_config``), run on the matching pixel patches: T slices
of 32x32 patches = 2T frames of 512x512. Times are medians of repeats after one warm-up.

On CPU the table also gives process CPU time (all threads), which other processes on a shared machine inflate
much less than wall time.

Usage: ``.venv/bin/python benchmarks/bench_selection.py [--quick] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vllm_vtprune.core import PruneConfig, select_tokens

GRID_HW = 16  # post-merger tokens per side: 512 px / (16 px patch * 2 merge)
RETENTION = 0.25
METHODS: list[tuple[str, dict]] = [
    ("none", {}),
    ("evs", {}),
    ("vcast", {}),
    ("stc", {}),
    ("stc", {"strategy": "dual_anchor"}),
    ("mssavt", {}),
    ("mssavt", {"mask": "greedy"}),
]


@dataclass(frozen=True)
class Plan:
    slices: tuple[int, ...]
    feature_shapes: tuple[tuple[int, torch.dtype], ...]  # (channels, dtype)
    repeats: int
    tower_repeats: int


FULL = Plan(
    slices=(32, 64),
    feature_shapes=(
        (4096, torch.bfloat16),
        (4096, torch.float32),
        (1024, torch.bfloat16),
        (1024, torch.float32),
    ),
    repeats=5,
    tower_repeats=3,
)
QUICK = Plan(slices=(4,), feature_shapes=((512, torch.bfloat16), (512, torch.float32)), repeats=2, tower_repeats=1)


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds, median
    cpu: float  # process CPU seconds (all threads), median


def _median_timing(fn: Callable[[], object], repeats: int, device: torch.device) -> Timing:
    def timed() -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    timed()  # warm-up
    walls, cpus = zip(*(timed() for _ in range(repeats)))
    return Timing(statistics.median(walls), statistics.median(cpus))


def _vision_config():
    try:
        from vllm_vtprune.testing.tiny_qwen3vl import scaled_config
    except ImportError:
        from transformers.models.qwen3_vl import Qwen3VLVisionConfig

        print("note: vllm_vtprune.testing.tiny_qwen3vl.scaled_config is missing; using the fallback vision config")
        fallback = Qwen3VLVisionConfig(
            depth=4,
            hidden_size=128,
            num_heads=2,
            intermediate_size=512,
            out_hidden_size=512,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            deepstack_visual_indexes=[1, 2, 3],
        )
        return fallback, "fallback config"
    return scaled_config().vision_config, "scaled_config()"


def tower_timings(slices: tuple[int, ...], repeats: int, device: torch.device) -> tuple[dict[int, Timing], str]:
    from transformers.models.qwen3_vl import Qwen3VLVisionModel

    config, name = _vision_config()
    torch.manual_seed(0)
    model = Qwen3VLVisionModel._from_config(config).to(device).eval()
    side = GRID_HW * config.spatial_merge_size  # patches per side
    patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
    desc = (
        f"{name}: depth {config.depth}, hidden {config.hidden_size}, heads {config.num_heads}, "
        f"out {config.out_hidden_size}, fp32"
    )
    out = {}
    with torch.inference_mode():
        for t in slices:
            pixels = torch.randn(t * side * side, patch_dim, device=device)
            grid = torch.tensor([[t, side, side]], device=device)
            out[t] = _median_timing(functools.partial(model, pixels, grid_thw=grid), repeats, device)
    return out, desc


def selection_timings(plan: Plan, device: torch.device) -> list[tuple[str, int, int, torch.dtype, Timing]]:
    rows = []
    for t in plan.slices:
        grid = (t, GRID_HW, GRID_HW)
        for channels, dtype in plan.feature_shapes:
            features = torch.randn(t * GRID_HW * GRID_HW, channels, generator=torch.Generator().manual_seed(t))
            features = features.to(device=device, dtype=dtype)
            for method, options in METHODS:
                cfg = PruneConfig.from_dict({"method": method, "retention": RETENTION, "options": options})
                run = functools.partial(select_tokens, features, [grid], [cfg])
                label = method + "".join(f" {k}={v}" for k, v in options.items())
                rows.append((label, t, channels, dtype, _median_timing(run, plan.repeats, device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run (small shapes)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    device = torch.device(args.device)
    started = time.perf_counter()
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} (other processes inflate wall times)"
    )

    selection = selection_timings(plan, device)
    tower, tower_desc = tower_timings(plan.slices, plan.tower_repeats, device)
    print(
        f"vision tower: {tower_desc}; {GRID_HW}x{GRID_HW} post-merger tokens per slice "
        f"({GRID_HW * 32}x{GRID_HW * 32} px frames, 2 frames per slice); retention {RETENTION}\n"
    )
    cpu = device.type == "cpu"
    columns = [
        "method".ljust(26),
        "slices",
        "channels",
        "dtype   ",
        "selection ms",
        "tower ms",
        "selection/tower %",
    ]
    if cpu:
        columns += ["selection cpu ms", "tower cpu ms", "cpu %"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    for label, t, channels, dtype, timing in selection:
        cells = [
            label.ljust(26),
            f"{t:>6}",
            f"{channels:>8}",
            str(dtype).removeprefix("torch.").ljust(8),
            f"{timing.wall * 1e3:>12.1f}",
            f"{tower[t].wall * 1e3:>8.0f}",
            f"{100 * timing.wall / tower[t].wall:>17.2f}",
        ]
        if cpu:
            cells += [
                f"{timing.cpu * 1e3:>16.1f}",
                f"{tower[t].cpu * 1e3:>12.0f}",
                f"{100 * timing.cpu / tower[t].cpu:>5.2f}",
            ]
        print("| " + " | ".join(cells) + " |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
