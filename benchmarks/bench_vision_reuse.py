"""ViT reuse benchmark: STC-Cacher and the exact slice cache, side by side, on vLLM's Qwen3-VL tower.

Runs vLLM 0.32.0's own ``Qwen3_VisionTransformer`` standalone (no engine) on the scaled config
(``vllm_vtprune.testing.tiny_qwen3vl.scaled_config``: Qwen3-VL-8B's ViT layout, narrower and shallower; HF's
seeded random init), fp32, on this machine's device (CPU here), through ``vllm_vtprune.vision.VideoEncoder``:

1. Tower time for a 32-frame 256x256 redundant video (``moving_objects``, ``near_static``): exact vs STC-Cacher
   (r = 0.25, refresh every 2 slices), interleaved pairs, medians (warm-up excluded), plus the per-slice fidelity
   of the cacher's output (cosine to the exact output over all channels, relative L2 error; selective slices).
2. A 10-turn growing-video session (turn i resends frames 0..N_i, N_i growing by ``--step`` frames): total tower
   time without and with the slice cache (and with both), same pixels, fresh encoder per repeat.

Pixels come from the checkpoint's Qwen3-VL video processor (tiny checkpoint, same processor settings as the
scaled one); their preparation and the slice-key hashing (API-server side) are not tower time (hashing is
reported on its own).

Timing: ``EncodeStats.tower_seconds`` (``StageTimer`` around the tower call: CUDA events on GPU, read once they
complete; wall clock on CPU) and the whole ``encode`` wall time. The dev box is a shared 2-core VM: one intra-op
thread (``--threads 1``, default) gives far steadier medians than oversubscribed OpenMP; ``--threads 0`` keeps
torch's default.

Usage: ``.venv/bin/python benchmarks/bench_vision_reuse.py [--quick] [--repeats N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / ".artifacts"


def _pixels(processor, frames):
    out = processor(videos=[frames], do_sample_frames=False, return_tensors="pt")
    return out["pixel_values_videos"].float(), [int(x) for x in out["video_grid_thw"][0].tolist()]


def _flop_bound(cfg, tokens_per_slice: int, ratio: float) -> float:
    """Tower time ratio if cost were proportional to matmul FLOPs (interval 2: half the slices selective)."""
    v = cfg.vision_config
    c, i, n, d = v.hidden_size, v.intermediate_size, tokens_per_slice, v.out_hidden_size
    cin = v.in_channels * v.temporal_patch_size * v.patch_size**2
    full_layer = 2 * c * 3 * c + 2 * 2 * n * c + 2 * c * c + 2 * 2 * c * i
    sel_layer = 2 * c * c + ratio * (2 * 2 * c * c + 2 * 2 * n * c + 2 * c * c + 2 * 2 * c * i)
    fixed = 2 * cin * c + (1 + len(v.deepstack_visual_indexes)) * (2 * 16 * c * c + 2 * 4 * c * d) / 4
    full = fixed + v.depth * full_layer
    return (fixed + v.depth * (full_layer + sel_layer) / 2) / full


def _fidelity(approx, exact, t: int):
    import torch

    a, e = approx.view(t, -1, approx.shape[-1]), exact.view(t, -1, exact.shape[-1])
    cos = torch.nn.functional.cosine_similarity(a, e, dim=-1)[1::2]
    rel = ((a - e).norm(dim=(1, 2)) / e.norm(dim=(1, 2)))[1::2]
    return {
        "cos_mean": cos.mean().item(),
        "cos_min_slice": cos.mean(1).min().item(),
        "cos_min_token": cos.min().item(),
        "rel_err_mean": rel.mean().item(),
        "rel_err_max": rel.max().item(),
    }


def bench_cacher(encoder, processor, kinds, num_frames, size, repeats, cacher):
    import torch

    from vllm_vtprune.testing.videos import make_frames
    from vllm_vtprune.vision import CacherConfig

    rows = []
    for kind in kinds:
        px, grid = _pixels(processor, make_frames(kind, num_frames, size, size))
        exact_cfg = CacherConfig()
        tower = {"exact": [], "cacher": []}
        wall = {"exact": [], "cacher": []}
        outs = {}
        for rep in range(repeats + 1):  # pair 0 is the warm-up
            for name, cfg in (
                (("exact", exact_cfg), ("cacher", cacher))
                if rep % 2 == 0
                else (("cacher", cacher), ("exact", exact_cfg))
            ):
                t0 = time.perf_counter()
                (out,), stats = encoder.encode(px, [grid], [cfg])
                dt = time.perf_counter() - t0
                if rep:
                    tower[name].append(stats.tower_seconds)
                    wall[name].append(dt)
                outs[name] = out
        paired = [c / e for c, e in zip(tower["cacher"], tower["exact"])]
        med = {k: statistics.median(v) for k, v in tower.items()}
        rows.append(
            {
                "video": kind,
                "grid": grid,
                "exact_s": med["exact"],
                "cacher_s": med["cacher"],
                "ratio": med["cacher"] / med["exact"],
                "paired_ratio_median": statistics.median(paired),
                "encode_wall_exact_s": statistics.median(wall["exact"]),
                "encode_wall_cacher_s": statistics.median(wall["cacher"]),
                "selective_slices": grid[0] // 2,
                **_fidelity(outs["cacher"], outs["exact"], grid[0]),
            }
        )
        assert torch.isfinite(outs["cacher"]).all()
    return rows


def bench_session(visual, processor, kind, first, step, turns, size, repeats, cacher, cache_bytes, salt):
    import torch

    from vllm_vtprune.testing.videos import make_frames
    from vllm_vtprune.vision import CacherConfig, VideoEncoder, slice_keys

    total = first + step * (turns - 1)
    frames = make_frames(kind, total, size, size)
    requests = []
    hash_s = []
    for i in range(turns):
        px, grid = _pixels(processor, frames[: first + step * i])
        t0 = time.perf_counter()
        keys = slice_keys(px, grid, salt)
        hash_s.append(time.perf_counter() - t0)
        requests.append((px, grid, keys))
    for (a, _, ka), (b, _, kb) in itertools.pairwise(requests):  # the resent prefix must be byte-identical
        assert torch.equal(b[: a.shape[0]], a) and torch.equal(kb[: ka.shape[0]], ka)

    modes = {
        "no cache": (CacherConfig(), False),
        "slice cache": (CacherConfig(), True),
        "slice cache + cacher": (cacher, True),
    }
    results = {m: {"tower": [], "wall": [], "computed": None, "from_cache": None} for m in modes}
    for rep in range(repeats + 1):  # repeat 0 is the warm-up
        order = list(modes) if rep % 2 == 0 else list(reversed(modes))
        for mode in order:
            cfg, use_cache = modes[mode]
            enc = VideoEncoder(visual, cache_bytes=cache_bytes if use_cache else 0)
            tower = wall = 0.0
            computed = from_cache = 0
            for px, grid, keys in requests:
                t0 = time.perf_counter()
                _, stats = enc.encode(px, [grid], [cfg], [keys], [use_cache])
                wall += time.perf_counter() - t0
                tower += stats.tower_seconds
                computed += stats.slices_computed
                from_cache += stats.slices_from_cache
            if rep:
                results[mode]["tower"].append(tower)
                results[mode]["wall"].append(wall)
            results[mode]["computed"], results[mode]["from_cache"] = computed, from_cache
    base = statistics.median(results["no cache"]["tower"])
    rows = []
    for mode, r in results.items():
        tower = statistics.median(r["tower"])
        rows.append(
            {
                "mode": mode,
                "tower_s": tower,
                "encode_wall_s": statistics.median(r["wall"]),
                "ratio": tower / base,
                "slices_computed": r["computed"],
                "slices_from_cache": r["from_cache"],
            }
        )
    info = {
        "video": kind,
        "turns": turns,
        "frames": [first + step * i for i in range(turns)],
        "slices_requested": sum(g[0] for _, g, _ in requests),
        "key_hash_ms_per_turn": 1e3 * statistics.mean(hash_s),
        "size": size,
    }
    return info, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny tower, small clips, 2 repeats: seconds")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per measurement (default 7; quick 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from transformers import AutoProcessor

    from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl, scaled_config, tiny_config
    from vllm_vtprune.vision import CacherConfig, VideoEncoder
    from vllm_vtprune.vision.standalone import build_vision_tower

    quick = args.quick
    repeats = args.repeats if args.repeats is not None else (2 if quick else 7)
    size = 128 if quick else 256
    num_frames = 8 if quick else 32
    first, step, turns = (4, 4, 4) if quick else (16, 4, 10)
    cfg_name, hf_cfg = ("tiny", tiny_config()) if quick else ("scaled", scaled_config())
    cacher = CacherConfig(True, 0.25, 2)

    t0 = time.perf_counter()
    processor = AutoProcessor.from_pretrained(build_tiny_qwen3vl(ARTIFACTS / "tiny")).video_processor
    visual = build_vision_tower(hf_cfg, seed=0, dtype=torch.float32, device=args.device)
    setup_s = time.perf_counter() - t0
    v = hf_cfg.vision_config
    print(
        f"ViT reuse benchmark: {cfg_name} config vision tower (vLLM Qwen3_VisionTransformer: depth {v.depth}, "
        f"hidden {v.hidden_size}, heads {v.num_heads}, mlp {v.intermediate_size}, deepstack "
        f"{v.deepstack_visual_indexes}), fp32, {args.device}, {torch.get_num_threads()} thread(s); "
        f"medians of {repeats} (warm-up excluded); setup {setup_s:.1f}s"
    )

    encoder = VideoEncoder(visual)
    t1 = time.perf_counter()
    cacher_rows = bench_cacher(
        encoder, processor, ["moving_objects", "near_static"], num_frames, size, repeats, cacher
    )
    tokens_per_slice = cacher_rows[0]["grid"][1] * cacher_rows[0]["grid"][2]
    bound = _flop_bound(hf_cfg, tokens_per_slice, cacher.recompute_ratio)
    print(
        f"\n(1) STC-Cacher: {num_frames} frames {size}x{size} (grid {cacher_rows[0]['grid']}), r = "
        f"{cacher.recompute_ratio}, refresh every {cacher.refresh_interval} slices  [{time.perf_counter() - t1:.0f}s]"
    )
    print(
        f"{'video':<16}{'exact s':>9}{'cacher s':>10}{'ratio':>8}{'paired':>8}{'cos mean':>10}{'cos min slice':>15}"
        f"{'cos min token':>15}{'rel err mean':>14}{'rel err max':>13}"
    )
    for r in cacher_rows:
        print(
            f"{r['video']:<16}{r['exact_s']:>9.3f}{r['cacher_s']:>10.3f}{r['ratio']:>7.3f}x{r['paired_ratio_median']:>7.3f}x"
            f"{r['cos_mean']:>10.5f}{r['cos_min_slice']:>15.5f}{r['cos_min_token']:>15.4f}{r['rel_err_mean']:>14.4f}"
            f"{r['rel_err_max']:>13.4f}"
        )
    print(
        f"target <= 0.70x (STC reported 0.755x on ReKV/SigLIP, GPU); matmul-FLOP-proportional bound for this "
        f"config: {bound:.3f}x (patch embed and the 4 mergers are not cached; half the slices are references)"
    )

    t2 = time.perf_counter()
    info, session_rows = bench_session(
        visual,
        processor,
        "moving_objects",
        first,
        step,
        turns,
        size,
        repeats,
        cacher,
        cache_bytes=1 << 30,
        salt=b"bench_vision_reuse|" + cfg_name.encode(),
    )
    print(
        f"\n(2) growing-video session: {turns} turns, frames 0..N with N = {info['frames'][0]}..{info['frames'][-1]} "
        f"(+{step}/turn), {size}x{size}, {info['slices_requested']} slices requested in total, slice cache 1 GiB  "
        f"[{time.perf_counter() - t2:.0f}s]"
    )
    print(f"{'mode':<22}{'tower s':>9}{'encode s':>10}{'ratio':>8}{'computed':>10}{'from cache':>12}")
    for r in session_rows:
        print(
            f"{r['mode']:<22}{r['tower_s']:>9.3f}{r['encode_wall_s']:>10.3f}{r['ratio']:>7.3f}x"
            f"{r['slices_computed']:>10}{r['slices_from_cache']:>12}"
        )
    print(
        f"target <= 0.2x; slice keys (BLAKE3, API-server side): {info['key_hash_ms_per_turn']:.2f} ms per turn"
    )

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "config": cfg_name,
                    "threads": torch.get_num_threads(),
                    "repeats": repeats,
                    "cacher": cacher_rows,
                    "flop_bound": bound,
                    "session": info,
                    "session_rows": session_rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_PLUGINS", "")  # the standalone tower needs no plugin
    sys.exit(main())
