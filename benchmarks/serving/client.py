"""Streaming chat requests through the OpenAI client, closed-loop at a fixed concurrency.

Timing follows ``vllm bench serve`` (``async_request_openai_chat_completions``) so numbers are comparable:
TTFT is the first chunk that carries a choice, the end is the last such chunk, TPOT is
``(latency - ttft) / (completion_tokens - 1)``. Output length is fixed (``max_tokens`` = ``min_tokens``,
``ignore_eos``) so every configuration decodes the same number of tokens.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from openai import AsyncOpenAI


@dataclass
class RequestResult:
    ok: bool
    start: float
    end: float
    ttft: float | None = None
    latency: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    text: str = ""
    error: str | None = None

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.ttft is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.completion_tokens - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("text")
        d["tpot"] = self.tpot
        return d


def video_message(video_url: str, question: str) -> dict[str, Any]:
    return {"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": video_url}},
        {"type": "text", "text": question},
    ]}


async def chat(
    client: AsyncOpenAI, model: str, messages: list[dict[str, Any]], output_len: int,
    vtprune: dict[str, Any] | None = None,
) -> RequestResult:
    """One streamed request; failures are recorded, not raised, so one bad request cannot end a sweep."""
    extra: dict[str, Any] = {"ignore_eos": True, "min_tokens": output_len}
    if vtprune is not None:
        extra["mm_processor_kwargs"] = {"vtprune": vtprune}
    start = time.perf_counter()
    result = RequestResult(ok=False, start=start, end=start)
    last = start
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=output_len, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra,
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices:
                if result.ttft is None:
                    result.ttft = now - start
                result.text += chunk.choices[0].delta.content or ""
                last = now
            if chunk.usage is not None:
                result.prompt_tokens = chunk.usage.prompt_tokens
                result.completion_tokens = chunk.usage.completion_tokens
                details = chunk.usage.prompt_tokens_details
                result.cached_tokens = details.cached_tokens if details is not None else None
        result.ok = result.ttft is not None
        if not result.ok:
            result.error = "no chunk with a choice"
    except Exception as e:  # noqa: BLE001 - recorded per request
        result.error = f"{type(e).__name__}: {e}"[:500]
    result.end = time.perf_counter()
    result.latency = last - start if result.ok else None
    return result


async def closed_loop(
    base_url: str, model: str, conversations: list[list[dict[str, Any]]], concurrency: int, output_len: int,
    vtprune: dict[str, Any] | None = None,
) -> list[RequestResult]:
    """Send ``conversations`` with exactly ``concurrency`` in flight (each worker sends its next request when
    the previous one finishes), as ``vllm bench serve --max-concurrency C --request-rate inf`` does."""
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=3600)
    results: list[RequestResult | None] = [None] * len(conversations)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(conversations):
            i, next_index = next_index, next_index + 1
            results[i] = await chat(client, model, conversations[i], output_len, vtprune)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return [r for r in results if r is not None]
