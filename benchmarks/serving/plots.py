"""PNG plots: throughput (and TTFT) vs concurrency, TTFT (and throughput) vs retention, streaming TTFT per turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt


def _style(config: str) -> dict[str, Any]:
    if config == "vanilla":
        return {"color": "black", "linestyle": "--", "linewidth": 2, "marker": "o"}
    if config == "none":
        return {"color": "grey", "linestyle": ":", "marker": "s"}
    return {"marker": "o"}


def concurrency_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    picked = [r for r in rows if r["sweep"] in ("concurrency", "both")]
    levels = sorted({r["concurrency"] for r in picked})
    if len(levels) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["config"]["name"] for r in picked):
        series = sorted((r["concurrency"], r["median"]) for r in picked if r["config"]["name"] == name)
        xs = [c for c, _ in series]
        axes[0].plot(xs, [m["request_throughput"] for _, m in series], label=name, **_style(name))
        axes[1].plot(xs, [m["ttft_p50"] for _, m in series], label=name, **_style(name))
    for ax, title in zip(axes, ("Request throughput (req/s)", "TTFT p50 (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.set_title(title)
        ax.set_ylim(bottom=0)  # a zero baseline, so small differences are not drawn as large ones
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retention_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    base = min(r["concurrency"] for r in rows)
    at_base = {r["config"]["name"]: r for r in rows if r["concurrency"] == base}
    methods = sorted({r["config"]["method"] for r in at_base.values() if r["config"]["method"] not in (None, "none")})
    if not methods:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    none = at_base.get("none")
    for method in methods:
        pts = sorted((r["config"]["retention"], r["median"]) for r in at_base.values()
                     if r["config"]["method"] == method)
        if none is not None:
            pts.append((1.0, none["median"]))  # "none" keeps every token: each method's retention-1.0 point
        xs = [x for x, _ in pts]
        axes[0].plot(xs, [m["ttft_p50"] for _, m in pts], label=method, marker="o")
        axes[1].plot(xs, [m["request_throughput"] for _, m in pts], label=method, marker="o")
    if "vanilla" in at_base:
        for ax, key in zip(axes, ("ttft_p50", "request_throughput")):
            ax.axhline(at_base["vanilla"]["median"][key], label="vanilla", **{**_style("vanilla"), "marker": None})
    titles = (f"TTFT p50 (s), concurrency {base}", f"Request throughput (req/s), concurrency {base}")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("retention (fraction of video tokens kept)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)  # a zero baseline, so small differences are not drawn as large ones
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


STAGE_COLOURS = {"api_server": "tab:purple", "queue": "tab:grey", "tower": "tab:orange", "selection": "tab:red",
                 "prefill": "tab:blue", "decode": "tab:green"}


def stage_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Per-request time by stage (stacked), one panel each at the lowest and highest concurrency."""
    picked = [r for r in rows if r["sweep"] in ("concurrency", "both")]
    levels = sorted({r["concurrency"] for r in picked})
    if not levels:
        return None
    panels = list(dict.fromkeys((levels[0], levels[-1])))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    for ax, c in zip(axes[0], panels):
        at = [r for r in picked if r["concurrency"] == c]
        names = [r["config"]["name"] for r in at]
        left = [0.0] * len(at)
        for stage, colour in STAGE_COLOURS.items():
            widths = [r["median"].get(f"stage_{stage}_s") or 0.0 for r in at]
            ax.barh(names, widths, left=left, color=colour, label=stage)
            left = [a + b for a, b in zip(left, widths)]
        ax.invert_yaxis()
        ax.set_xlabel("seconds per request (mean)")
        ax.set_title(f"Where a request's time goes, concurrency {c}")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def streaming_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Per turn: TTFT, prompt tokens computed and tower time; one row of panels per client mode."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    if not modes:
        return None
    fig, axes = plt.subplots(len(modes), 3, figsize=(15, 4.2 * len(modes)), squeeze=False)
    for ax_row, mode in zip(axes, modes):
        for r in (r for r in rows if r["mode"] == mode):
            name = r["config"]["name"]
            turns = [t["turn"] for t in r["per_turn"]]
            ax_row[0].plot(turns, [t["ttft"] for t in r["per_turn"]], label=name, **_style(name))
            ax_row[1].plot(turns, [t["computed_tokens"] for t in r["per_turn"]], label=name, **_style(name))
            if r["config"]["server"] != "vanilla":  # vanilla exports no tower time
                ax_row[2].plot(turns, [t["tower_seconds"] for t in r["per_turn"]], label=name, **_style(name))
        titles = ("TTFT per turn (s)", "Prompt tokens computed per turn", "Vision-tower time per turn (s, plugin)")
        for ax, title in zip(ax_row, titles):
            ax.set_xlabel(f"turn ({mode}: the video grows every turn)")
            ax.set_title(f"{title}, {mode}")
            ax.set_ylim(bottom=0)  # a zero baseline, so small differences are not drawn as large ones
            ax.grid(alpha=0.3)
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
