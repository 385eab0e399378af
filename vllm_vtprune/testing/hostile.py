"""What an untrusted client can send a server: odd and corrupt media, and a raw HTTP chat client that sends any
JSON (values the OpenAI client would refuse to encode, lone surrogates, huge integers) and gives up early.

Shared by the hostile, parity and soak serving tests and the memory benchmark.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from vllm_vtprune.testing.videos import iter_frames, make_frames, mp4_data_url, write_mp4

NOT_SET: Any = object()  # no mm_processor_kwargs at all


@dataclass(frozen=True)
class Media:
    """A ``video_url`` a client may send, and whether vLLM can make a video of it (vanilla vLLM answers 200 for
    ``decodable`` media and 400 for the rest)."""

    name: str
    url: str
    decodable: bool


def _clip(directory: Path, kind: str, frames: int, width: int, height: int, fps: float = 4.0, seed: int = 0) -> Path:
    path = directory / f"{kind}_s{seed}_{frames}f_{width}x{height}_{fps:g}fps.mp4"
    if not path.exists():
        write_mp4(make_frames(kind, frames, width, height, seed), path, fps)
    return path


def long_clip(directory: str | Path) -> Path:
    """240 frames of 960x720 at 4 fps (a minute of real motion): vanilla vLLM samples it to its frame limit and
    serves it; the plugin once refused it. Written frame by frame (a 500 MB clip never sits in memory)."""
    path = Path(directory) / "moving_objects_s0_240f_960x720_4fps.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(iter_frames("moving_objects", 240, 960, 720), path, 4.0)
    return path


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def odd_media(directory: str | Path) -> list[Media]:
    """Corrupt files and odd geometries, each a data URL. A clip of one frame at 4 fps lasts 0.25 s, where
    vLLM's sampler (2 fps) takes no frame at all: vLLM refuses it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    good = _clip(directory, "moving_objects", 16, 128, 96).read_bytes()
    png = cv2.imencode(".png", make_frames("scene_cut", 1, 64, 48)[0])[1].tobytes()
    noise = np.random.default_rng(11).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes()
    return [
        Media("truncated_half", _data_url(good[: len(good) // 2], "video/mp4"), False),
        Media("truncated_header", _data_url(good[:64], "video/mp4"), False),
        Media("random_bytes", _data_url(noise, "video/mp4"), False),
        Media("empty_data_url", "data:video/mp4;base64,", False),
        Media("png_as_video", _data_url(png, "video/mp4"), False),
        Media("png_as_video_image_mime", _data_url(png, "image/png"), False),
        Media("text_as_video", _data_url(b"not a video\n" * 64, "text/plain"), False),
        Media("one_frame", mp4_data_url(_clip(directory, "moving_objects", 1, 64, 64)), False),
        Media("two_frames", mp4_data_url(_clip(directory, "moving_objects", 2, 64, 64)), True),
        Media("8x8", mp4_data_url(_clip(directory, "moving_objects", 8, 8, 8)), True),
        Media("2x2", mp4_data_url(_clip(directory, "near_static", 4, 2, 2)), True),
        Media("33x47", mp4_data_url(_clip(directory, "scene_cut", 12, 33, 47)), True),
        Media("wide_2048x16", mp4_data_url(_clip(directory, "slow_pan", 8, 2048, 16)), True),
        Media("tall_16x2048", mp4_data_url(_clip(directory, "slow_pan", 8, 16, 2048)), True),
        Media("wide_1024x32", mp4_data_url(_clip(directory, "moving_objects", 12, 1024, 32)), True),
    ]


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or the text when it is not JSON

    @property
    def message(self) -> str:
        return self.body["error"]["message"] if isinstance(self.body, dict) and "error" in self.body else ""

    @property
    def prompt_tokens(self) -> int:
        return self.body["usage"]["prompt_tokens"]


class RawChat:
    """Chat completions as raw HTTP: any JSON body, the status as it comes (no client-side validation).

    One connection per request: vLLM answers some client mistakes (a ``file://`` video URL on a server without
    ``--allowed-local-media-path``) with a 500 and then closes the connection, which a pooled connection would
    meet as a reset on the next request."""

    def __init__(self, base_url: str, model: str, timeout: float = 600.0) -> None:
        self.url = base_url
        self.model = model
        self.http = httpx.Client(base_url=base_url, timeout=timeout, headers={"connection": "close"})

    def body(self, videos: Sequence[str] = (), question: str = "What happens in the video?", *,
             vtprune: Any = NOT_SET, max_tokens: int = 1, **extra: Any) -> dict[str, Any]:
        content = [{"type": "video_url", "video_url": {"url": url}} for url in videos]
        content.append({"type": "text", "text": question})
        body = {"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                "temperature": 0.0, **extra}
        if vtprune is not NOT_SET:
            body["mm_processor_kwargs"] = {"vtprune": vtprune}
        return body

    def post(self, body: dict[str, Any] | str) -> Reply:
        """``body`` as a dict, or as JSON text sent byte for byte (e.g. holding ``"\\ud800"``)."""
        text = body if isinstance(body, str) else json.dumps(body)
        r = self.http.post("/v1/chat/completions", content=text.encode("utf-8", "surrogatepass"),
                           headers={"content-type": "application/json"})
        try:
            return Reply(r.status_code, r.json())
        except ValueError:
            return Reply(r.status_code, r.text)

    def ask(self, videos: Sequence[str] = (), question: str = "What happens in the video?", *,
            vtprune: Any = NOT_SET, **extra: Any) -> Reply:
        return self.post(self.body(videos, question, vtprune=vtprune, **extra))

    def ask_raw_vtprune(self, videos: Sequence[str], vtprune_json: str, **extra: Any) -> Reply:
        """A request whose ``mm_processor_kwargs.vtprune`` is the given JSON text, verbatim."""
        text = json.dumps(self.body(videos, **extra))
        return self.post(text[:-1] + ', "mm_processor_kwargs": {"vtprune": ' + vtprune_json + "}}")

    def stream_and_hang_up(self, body: dict[str, Any]) -> str:
        """Start a streaming answer, read its first chunk, close the connection (the server aborts it)."""
        with self.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            if r.status_code != 200:
                raise AssertionError(f"streaming request refused: {r.status_code} {r.read()[:300]!r}")
            return next(line for line in r.iter_lines() if line.strip())

    def give_up_after(self, body: dict[str, Any], seconds: float) -> bool:
        """Send a request and stop waiting after ``seconds`` (a client timeout): True if it gave up."""
        try:
            self.http.post("/v1/chat/completions", json=body, timeout=httpx.Timeout(600.0, read=seconds))
        except httpx.ReadTimeout:
            return True
        return False

    def health(self) -> int:
        return self.http.get("/health", timeout=60).status_code

    def wait_idle(self, timeout: float = 300.0) -> None:
        """Until vLLM reports no running or waiting request (aborted ones must leave)."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.http.get("/metrics", timeout=60).text
            busy = sum(metric(metrics, name) for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"))
            if busy == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{busy:g} requests still running or waiting after {timeout:.0f} s")
            time.sleep(0.5)

    def close(self) -> None:
        self.http.close()


def metric(text: str, name: str, labels: str | None = None) -> float:
    """Sum of a metric's samples in a Prometheus exposition (those whose labels contain ``labels``); KeyError if
    it has none (a misspelt name must not read as zero)."""
    samples = [float(m.group(2)) for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)
               if labels is None or labels in (m.group(1) or "")]
    if not samples:
        raise KeyError(f"no sample of {name}{'{' + labels + '}' if labels else ''} in the metrics")
    return sum(samples)
