"""Ask every question under every configuration through ``/v1/chat/completions``, a few requests in flight.

Greedy decoding (``temperature`` 0) and a small ``max_tokens``; the plugin's method and retention are chosen
per request (``mm_processor_kwargs.vtprune``). A failed request is recorded with its error, never raised,
so one bad video cannot end a run.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from tqdm import tqdm

from vllm_vtprune.core import available_methods
from vllm_vtprune.testing.videos import mp4_data_url

from .dataset import Question, parse_letter


@dataclass(frozen=True)
class Config:
    """One column of the results: a server and, on the plugin server, a method (before or after the tower) and a
    retention."""

    name: str
    server: str  # "vanilla" or "plugin"
    method: str | None = None
    retention: float | None = None

    @property
    def vtprune(self) -> dict[str, Any] | None:
        if self.method is None:
            return None
        if self.method in available_methods("pre_tower"):  # decided from the pixels; the tower runs on the kept
            return {"method": "none", "pre_tower": {"method": self.method, "retention": self.retention}}
        return {"method": self.method, "retention": self.retention}


@dataclass
class Answer:
    config: str
    question: str  # Question.id
    reply: str | None
    letter: str | None
    correct: bool
    prompt_tokens: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def video_url(video: str, transport: str) -> str:
    """A local file as a data URL (``data-url``) or a ``file://`` URL (needs ``--allowed-local-media-path``)."""
    if "://" in video or video.startswith("data:"):
        return video
    return mp4_data_url(video) if transport == "data-url" else Path(video).resolve().as_uri()


async def _ask(client: AsyncOpenAI, model: str, q: Question, config: Config, url: str, max_tokens: int) -> Answer:
    messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                             {"type": "text", "text": q.prompt}]}]
    extra = {"mm_processor_kwargs": {"vtprune": config.vtprune}} if config.vtprune else None
    try:
        reply = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                     temperature=0.0, extra_body=extra)
    except Exception as e:  # noqa: BLE001 - recorded per request
        return Answer(config.name, q.id, None, None, False, error=f"{type(e).__name__}: {e}"[:500])
    text = reply.choices[0].message.content or ""
    letter = parse_letter(text, q.letters)
    return Answer(config.name, q.id, text, letter, letter == q.answer, reply.usage.prompt_tokens)


async def ask_all(urls: dict[str, str], model: str, questions: list[Question], configs: list[Config],
                  concurrency: int, max_tokens: int, transport: str, progress: bool = True) -> list[Answer]:
    """Every (question, configuration) pair, ``concurrency`` requests in flight per server.

    Questions go round the configurations in turn, so both servers stay busy and a slow drift of the
    machine's load spreads over all configurations alike.
    """
    clients = {name: AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
               for name, url in urls.items()}
    limits = {name: asyncio.Semaphore(concurrency) for name in urls}
    video_urls = {q.id: video_url(q.video, transport) for q in questions}
    bar = tqdm(total=len(questions) * len(configs), desc="questions x configs", disable=not progress)

    async def one(q: Question, config: Config) -> Answer:
        async with limits[config.server]:
            answer = await _ask(clients[config.server], model, q, config, video_urls[q.id], max_tokens)
        bar.update()
        return answer

    try:
        return list(await asyncio.gather(*(one(q, c) for q in questions for c in configs)))
    finally:
        bar.close()
        for client in clients.values():
            await client.close()
