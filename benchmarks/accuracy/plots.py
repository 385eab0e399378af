"""PNG: accuracy vs retention per method, one panel per task and one for all questions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt

from .stats import OVERALL


def accuracy_plot(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> Path | None:
    """Each method's accuracy at its retentions, the plugin's ``none`` as every method's retention-1.0 point,
    vanilla as a dashed line, on 0-1 axes."""
    methods = sorted({r["config"]["method"] for r in rows if r["config"]["method"] not in (None, "none")})
    if not methods:
        return None
    vanilla = next((r for r in rows if r["config"]["server"] == "vanilla"), None)
    none = next((r for r in rows if r["config"]["method"] == "none"), None)
    keys = [OVERALL, *tasks]
    cols = min(3, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for method in methods:
            pts = sorted((r["config"]["retention"], r["accuracy"][key]["accuracy"]) for r in rows
                         if r["config"]["method"] == method and r["accuracy"][key]["accuracy"] is not None)
            if none is not None and none["accuracy"][key]["accuracy"] is not None:
                pts.append((1.0, none["accuracy"][key]["accuracy"]))
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
        if vanilla is not None and vanilla["accuracy"][key]["accuracy"] is not None:
            ax.axhline(vanilla["accuracy"][key]["accuracy"], color="black", linestyle="--", label="vanilla")
        ax.set_title(key)
        ax.set_xlabel("retention")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
