"""Configurations and one measurement: every question under every configuration, summarised."""

from __future__ import annotations

import asyncio
from typing import Any

from .client import Config, ask_all
from .dataset import Question
from .stats import disagreements, summarize, tasks_of

VANILLA, PLUGIN = "vanilla", "plugin"


def build_configs(methods: list[str], retentions: list[float], vanilla: bool = True) -> list[Config]:
    """Vanilla, the plugin's ``none`` (every method's retention-1.0 point) and each method at each retention."""
    configs = [Config(VANILLA, VANILLA)] if vanilla else []
    if "none" in methods:
        configs.append(Config("none", PLUGIN, "none", 1.0))
    configs += [Config(f"{m}@{r:g}", PLUGIN, m, r) for m in methods if m != "none" for r in retentions]
    return configs


def measure(urls: dict[str, str], model: str, questions: list[Question], configs: list[Config], *,
            concurrency: int = 4, max_tokens: int = 1, transport: str = "data-url",
            progress: bool = True) -> dict[str, Any]:
    """Rows per configuration (see :func:`.stats.summarize`), every answer, and for each plugin
    configuration at retention 1.0 the ids of questions whose reply differs from vanilla's."""
    answers = asyncio.run(ask_all(urls, model, questions, configs, concurrency, max_tokens, transport, progress))
    result = {"tasks": tasks_of(questions), "rows": summarize(questions, configs, answers),
              "answers": [a.to_dict() for a in answers],
              "first_errors": [a.error for a in answers if a.error][:5]}
    if any(c.server == VANILLA for c in configs):
        result["identical_to_vanilla"] = {c.name: disagreements(answers, c.name, VANILLA)
                                          for c in configs if c.server == PLUGIN and c.retention == 1.0}
    return result
