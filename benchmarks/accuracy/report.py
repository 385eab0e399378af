"""The markdown report: accuracy per configuration and task, with 95 % Wilson intervals and ratios to vanilla."""

from __future__ import annotations

from typing import Any

from .stats import OVERALL


def _cell(v: dict[str, Any]) -> str:
    if v["accuracy"] is None:
        return "n/a"
    lo, hi = v["ci95"]
    return f"{100 * v['accuracy']:.0f} ({100 * lo:.0f}-{100 * hi:.0f})"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def accuracy_table(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    keys = [OVERALL, *tasks]
    lines = ["| config | prompt tokens | " + " | ".join(keys) + " | overall / vanilla |",
             "|---|---|" + "---|" * (len(keys) + 1)]
    for row in rows:
        tokens = row["mean_prompt_tokens"]
        ratio = row.get("ratio_to_vanilla", {}).get(OVERALL)
        lines.append(f"| {row['config']['name']} | {'n/a' if tokens is None else f'{tokens:.0f}'} | "
                     + " | ".join(_cell(row["accuracy"][k]) for k in keys) + f" | {_ratio(ratio)} |")
    return "\n".join(lines)


def ratio_table(rows: list[dict[str, Any]], tasks: list[str]) -> str:
    keys = [OVERALL, *tasks]
    lines = ["| config | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for row in rows:
        if row["config"]["server"] == "vanilla" or "ratio_to_vanilla" not in row:
            continue
        lines.append(f"| {row['config']['name']} | "
                     + " | ".join(_ratio(row["ratio_to_vanilla"][k]) for k in keys) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any], image_prefix: str = "") -> str:
    rows, tasks = result["rows"], result["tasks"]
    out = [
        "## Accuracy vs retention",
        "",
        f"Command: `{result['command']}`  ",
        f"Model: `{result['model']}`; {result['questions']} questions ({result['dataset']}); "
        f"greedy, max_tokens {result['settings']['max_tokens']}; "
        f"machine: {result['machine']['cpu_count']} CPUs, load average at start "
        f"{', '.join(f'{x:.1f}' for x in result['machine']['load_average'])}; wall time "
        f"{result['wall_seconds'] / 60:.1f} min.",
        "",
        "Accuracy in % (95 % Wilson interval); `prompt tokens` is the mean per request as the server counted it.",
        "",
        accuracy_table(rows, tasks),
        "",
        "Accuracy as a ratio to vanilla's:",
        "",
        ratio_table(rows, tasks),
        "",
    ]
    if result.get("identical_to_vanilla"):
        out += ["Replies identical to vanilla's, question by question: "
                + ", ".join(f"`{k}`: {'yes' if not v else f'no ({len(v)} differ)'}"
                            for k, v in result["identical_to_vanilla"].items()), ""]
    if result.get("plot"):
        out += [f"![accuracy vs retention]({image_prefix}{result['plot']})", ""]
    if result.get("servers"):
        out += ["Servers:", "", *[f"- {name}: `{cmd}`" for name, cmd in result["servers"].items()], ""]
    errors = sum(r["errors"] for r in rows)
    if errors:
        out += [f"WARNING: {errors} requests failed; see `first_errors` in the JSON.", ""]
    return "\n".join(out)
