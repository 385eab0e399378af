"""Pre-tower pruning benchmark: the vision tower on kept merge groups only vs the full tower.

Runs vLLM 0.32.0's own ``Qwen3_VisionTransformer`` standalone (no engine) on the scaled config
(``vllm_vtprune.testing.tiny_qwen3vl.scaled_config``: Qwen3-VL-8B's ViT layout, narrower and shallower; HF's
seeded random init), fp32, on this machine's device (CPU here). Per generated video kind (``moving_objects``,
``slow_pan``, ``scene_cut``, ``near_static``; 32 frames 256x256 = 16 slices of 8x8 LLM tokens), pre-tower method
(``novelty``, ``dedup``) and retention (0.5, 0.25):

- selection: ``select_pretower`` on the uint8 rows vLLM ships with ``mm_device_do_normalize`` (API-server side,
  not tower time), and the share of pixel rows that cross to the worker; per video, the share of merge groups
  that exactly repeat the previous slice (what ``dedup`` drops first);
- tower time: the full tower (``visual(pixels, grid)``) and ``run_subset_tower`` on the shipped rows, interleaved
  pairs, medians (warm-up excluded), and their ratio;
- fidelity: cosine of each kept token's subset-tower output to the full tower's output for that token (main merger
  channels, and all channels incl. DeepStack): mean and minimum. The subset output is exact for the restricted
  computation; this measures what dropping the other groups from each slice's attention costs.

Selection reads the uint8 levels; the tower reads the same video normalised as the HF processor does (the
standalone tower has no device-side input norm), in both runs.
Timing: one intra-op thread by default (``--threads 1``) for steady medians on a shared 2-core VM.

Usage: ``.venv/bin/python benchmarks/bench_pretower.py [--quick] [--repeats N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".artifacts"
KINDS = ("moving_objects", "slow_pan", "scene_cut", "near_static")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_video(visual, levels, pixels, grid_thw, configs, repeats, main_channels):
    import torch

    from vllm_vtprune.core.novelty import temporal_change
    from vllm_vtprune.core.pixels import group_view
    from vllm_vtprune.core.pretower import select_pretower
    from vllm_vtprune.vision.subset_tower import run_subset_tower

    repeats_previous = (temporal_change(group_view(levels, grid_thw)) == 0).sum().item() / (levels.shape[0] // 4)
    rows = []
    with torch.inference_mode():
        full, _ = _timed(lambda: visual(pixels, [grid_thw]))
        for name, cfg in configs:
            sel, select_s = _timed(lambda: select_pretower(levels, [grid_thw], [cfg])[0])
            shipped = pixels[sel.pixel_rows()]
            times = {"full": [], "subset": []}
            for rep in range(repeats + 1):  # pair 0 is the warm-up
                order = ("full", "subset") if rep % 2 == 0 else ("subset", "full")
                for mode in order:
                    if mode == "full":
                        _, dt = _timed(lambda: visual(pixels, [grid_thw]))
                    else:
                        sub, dt = _timed(
                            lambda: run_subset_tower(visual, shipped, [grid_thw], [sel.kept], [sel.slice_source])
                        )
                    if rep:
                        times[mode].append(dt)
            ref = full[sel.kept]
            cos_main = torch.nn.functional.cosine_similarity(sub[:, :main_channels], ref[:, :main_channels], dim=-1)
            cos_all = torch.nn.functional.cosine_similarity(sub, ref, dim=-1)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(
                {
                    "method": name,
                    "groups_repeating_previous_slice": repeats_previous,
                    "kept": sel.kept.numel(),
                    "tokens": full.shape[0],
                    "rows_shipped": shipped.shape[0] / pixels.shape[0],
                    "repeated_slices": int((sel.slice_source >= 0).sum()),
                    "select_ms": 1e3 * select_s,
                    "full_s": med["full"],
                    "subset_s": med["subset"],
                    "ratio": med["subset"] / med["full"],
                    "paired_ratio_median": statistics.median(s / f for s, f in zip(times["subset"], times["full"])),
                    "cos_main_mean": cos_main.mean().item(),
                    "cos_main_min": cos_main.min().item(),
                    "cos_all_mean": cos_all.mean().item(),
                    "cos_all_min": cos_all.min().item(),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny tower, 8 frames 128x128, 2 repeats: seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs per measurement (default 5; quick 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from transformers import AutoProcessor

    from vllm_vtprune.core import PruneConfig
    from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl, scaled_config, tiny_config
    from vllm_vtprune.testing.videos import make_frames
    from vllm_vtprune.vision.standalone import build_vision_tower

    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (2 if quick else 5)
    size, num_frames = (128, 8) if quick else (256, 32)
    cfg_name, hf_cfg = ("tiny", tiny_config()) if quick else ("scaled", scaled_config())
    configs = [
        (f"{method} R={retention}", PruneConfig(method=method, retention=retention))
        for method in ("novelty", "dedup")
        for retention in (0.5, 0.25)
    ]

    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(build_tiny_qwen3vl(ARTIFACTS / "tiny")).video_processor
    visual = build_vision_tower(hf_cfg, seed=0, dtype=torch.float32, device=args.device)
    v = hf_cfg.vision_config
    print(
        f"Pre-tower pruning benchmark: {cfg_name} config vision tower (vLLM Qwen3_VisionTransformer: depth {v.depth}, "
        f"hidden {v.hidden_size}, heads {v.num_heads}, mlp {v.intermediate_size}, deepstack "
        f"{v.deepstack_visual_indexes}), fp32, {args.device}, {torch.get_num_threads()} thread(s); medians of "
        f"{repeats} interleaved pairs (warm-up excluded); setup {time.perf_counter() - t0:.1f}s"
    )
    results = {}
    header = (
        f"{'video':<15}{'method':<17}{'kept':>10}{'rows':>7}{'rep':>5}{'select':>9}{'full s':>8}{'subset s':>9}"
        f"{'ratio':>8}{'paired':>8}{'cos main':>10}{'min':>7}{'cos all':>9}{'min':>7}"
    )
    for kind in KINDS:
        frames = make_frames(kind, num_frames, size, size)
        raw = processor(
            videos=[frames], do_sample_frames=False, do_rescale=False, do_normalize=False, return_tensors="pt"
        )
        pixels = processor(videos=[frames], do_sample_frames=False, return_tensors="pt")["pixel_values_videos"]
        grid_thw = [int(x) for x in raw["video_grid_thw"][0]]
        t1 = time.perf_counter()
        rows = bench_video(
            visual, raw["pixel_values_videos"], pixels.to(args.device), grid_thw, configs, repeats, v.out_hidden_size
        )
        dup = rows[0]["groups_repeating_previous_slice"]
        results[kind] = {"grid_thw": grid_thw, "groups_repeating_previous_slice": dup, "rows": rows}
        print(
            f"\n{kind}: {num_frames} frames {size}x{size}, grid_thw {grid_thw}, {dup:.1%} of the groups repeat the "
            f"previous slice exactly  [{time.perf_counter() - t1:.0f}s]"
        )
        print(header)
        for r in rows:
            print(
                f"{kind:<15}{r['method']:<17}{r['kept']:>5}/{r['tokens']:<4}{r['rows_shipped']:>7.2f}"
                f"{r['repeated_slices']:>5}{r['select_ms']:>7.1f}ms{r['full_s']:>8.3f}{r['subset_s']:>9.3f}"
                f"{r['ratio']:>7.3f}x{r['paired_ratio_median']:>7.3f}x{r['cos_main_mean']:>10.4f}"
                f"{r['cos_main_min']:>7.3f}{r['cos_all_mean']:>9.4f}{r['cos_all_min']:>7.3f}"
            )
    print(
        "\nrows: share of pixel rows shipped to the worker; rep: repeated slices computed once; cos: kept tokens' "
        "subset output vs the full tower's output for the same token (main merger channels / all incl. DeepStack)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"config": cfg_name, "threads": torch.get_num_threads(), "repeats": repeats, "videos": results},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_PLUGINS", "")  # the standalone tower needs no plugin
    sys.exit(main())
