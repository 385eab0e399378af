"""A greedy OpenAI chat client for video questions (tests and the demo)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from openai import OpenAI

from vllm_vtprune.testing.videos import mp4_data_url


class VideoChat:
    def __init__(self, base_url: str, model: str):
        self.client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
        self.model = model

    def ask(self, videos: Sequence[Path], question: str = "What happens in the video?", *,
            vtprune: dict | str | None = None, max_tokens: int = 8, images: Sequence[str] = (), **extra_body):
        """One greedy answer; ``vtprune`` becomes the request's ``mm_processor_kwargs["vtprune"]``."""
        content = [{"type": "video_url", "video_url": {"url": mp4_data_url(v)}} for v in videos]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in images]
        content.append({"type": "text", "text": question})
        if vtprune is not None:
            extra_body["mm_processor_kwargs"] = {"vtprune": vtprune}
        return self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": content}], max_tokens=max_tokens,
            temperature=0.0, logprobs=True, extra_body=extra_body or None,
        )


def output_tokens(reply) -> list[str]:
    return [t.token for t in reply.choices[0].logprobs.content]
