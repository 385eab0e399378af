"""Accuracy per task with Wilson intervals, and ratios to vanilla."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .client import Answer, Config
from .dataset import Question

OVERALL = "overall"


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) when there is no data."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    denom = 1 + z * z / total
    center = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def tasks_of(questions: list[Question]) -> list[str]:
    return list(dict.fromkeys(q.task for q in questions))


def summarize(questions: list[Question], configs: list[Config], answers: list[Answer]) -> list[dict[str, Any]]:
    """One row per configuration: per task and overall ``{correct, total, accuracy, ci95}``, errors, mean
    prompt tokens, and ``ratio_to_vanilla`` (accuracy over vanilla's, per task) when vanilla was run."""
    task_of = {q.id: q.task for q in questions}
    tasks = tasks_of(questions)
    rows = []
    for config in configs:
        right: dict[str, int] = defaultdict(int)
        total: dict[str, int] = defaultdict(int)
        tokens, errors = [], 0
        for a in answers:
            if a.config != config.name:
                continue
            for key in (task_of[a.question], OVERALL):
                total[key] += 1
                right[key] += a.correct
            errors += a.error is not None
            if a.prompt_tokens is not None:
                tokens.append(a.prompt_tokens)
        accuracy = {}
        for key in [*tasks, OVERALL]:
            n, k = total[key], right[key]
            accuracy[key] = {"correct": k, "total": n, "accuracy": k / n if n else None, "ci95": wilson(k, n)}
        rows.append({"config": {"name": config.name, "server": config.server, "method": config.method,
                                "retention": config.retention},
                     "accuracy": accuracy, "errors": errors,
                     "mean_prompt_tokens": sum(tokens) / len(tokens) if tokens else None})
    vanilla = next((r for r in rows if r["config"]["server"] == "vanilla"), None)
    if vanilla is not None:
        for row in rows:
            row["ratio_to_vanilla"] = {
                key: (v["accuracy"] / base["accuracy"] if v["accuracy"] is not None and base["accuracy"] else None)
                for key, v in row["accuracy"].items() for base in [vanilla["accuracy"][key]]}
    return rows


def disagreements(answers: list[Answer], config: str, reference: str) -> list[str]:
    """Question ids whose reply under ``config`` differs from the reply under ``reference``."""
    replies = {a.question: a.reply for a in answers if a.config == reference}
    return [a.question for a in answers if a.config == config and a.reply != replies.get(a.question)]
