"""The trained tiny Qwen3-VL through real ``vllm serve``: what it was trained on is what the server feeds it,
it reaches the accuracy recorded at training time through the harness, and at retention 1.0 every plugin
method answers exactly as vanilla does."""

from __future__ import annotations

import pytest
from openai import OpenAI
from transformers import AutoProcessor

from benchmarks.accuracy import dataset
from benchmarks.accuracy.client import video_url
from benchmarks.accuracy.stats import OVERALL
from benchmarks.accuracy.suite import PLUGIN, VANILLA, build_configs, measure
from vllm_vtprune.testing import qa_inputs
from vllm_vtprune.testing.video_qa import FAMILIES

pytestmark = pytest.mark.server

NUM_QUESTIONS = 50  # 10 per family
NUM_IDENTITY_QUESTIONS = 25
# vLLM's CPU kernels and transformers' eager ones round differently, so a near-tie may flip: at most this
# many of the NUM_QUESTIONS answers may differ from the ones recorded with transformers at training time.
MAX_FLIPS = 2
METHODS = ("none", "evs", "vcast", "stc", "mssavt")


@pytest.fixture(scope="module")
def questions(qa_media) -> list[dataset.Question]:
    return dataset.builtin(qa_media, NUM_QUESTIONS)


def _model(url: str) -> str:
    return OpenAI(base_url=f"{url}/v1", api_key="unused").models.list().data[0].id


@pytest.fixture(scope="module")
def vanilla_run(qa_servers, questions) -> dict:
    configs = build_configs(["none"], [])
    return measure(qa_servers, _model(qa_servers[PLUGIN]), questions, configs, concurrency=1, progress=False)


def test_server_prompt_is_the_training_input(qa_servers, questions, videoqa_model):
    processor = AutoProcessor.from_pretrained(videoqa_model)
    one_per_family = [next(q for q in questions if q.task == f) for f in FAMILIES]
    for name, url in qa_servers.items():
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for q in one_per_family:
            reply = client.chat.completions.create(
                model=_model(url), max_tokens=1, temperature=0.0, extra_body={"return_token_ids": True},
                messages=[{"role": "user", "content": [
                    {"type": "video_url", "video_url": {"url": video_url(q.video, "data-url")}},
                    {"type": "text", "text": q.prompt}]}])
            with open(q.video, "rb") as f:
                trained_on = qa_inputs.encode(processor, qa_inputs.load_like_vllm(f.read()), q.prompt)
            assert reply.prompt_token_ids == trained_on["input_ids"][0].tolist(), (name, q.id)


def test_harness_reaches_the_recorded_accuracy(vanilla_run, questions, videoqa_metrics):
    recorded = videoqa_metrics["answers"]  # transformers' greedy answer per test seed, at training time
    answers = {a["question"]: a for a in vanilla_run["answers"] if a["config"] == VANILLA}
    assert all(a["error"] is None for a in answers.values())
    flips = [q.id for q in questions if answers[q.id]["reply"] != recorded[q.id]]
    assert len(flips) <= MAX_FLIPS, flips
    vanilla = next(r for r in vanilla_run["rows"] if r["config"]["name"] == VANILLA)
    recorded_right = sum(recorded[q.id] == q.answer for q in questions)
    assert abs(vanilla["accuracy"][OVERALL]["correct"] - recorded_right) <= MAX_FLIPS
    for family in FAMILIES:  # the trained model answers every family far above chance through vLLM
        assert vanilla["accuracy"][family]["accuracy"] >= 0.7, (family, vanilla["accuracy"][family])


def test_full_retention_answers_exactly_as_vanilla(qa_servers, vanilla_run, questions):
    assert vanilla_run["identical_to_vanilla"] == {"none": []}
    configs = [c for c in build_configs(list(METHODS), [1.0], vanilla=False) if c.method != "none"]
    subset = questions[:NUM_IDENTITY_QUESTIONS]
    run = measure(qa_servers, _model(qa_servers[PLUGIN]), subset, configs, concurrency=1, progress=False)
    vanilla = {a["question"]: a for a in vanilla_run["answers"] if a["config"] == VANILLA}
    for a in run["answers"]:
        assert a["error"] is None, a
        assert a["reply"] == vanilla[a["question"]]["reply"], a
        assert a["prompt_tokens"] == vanilla[a["question"]]["prompt_tokens"], a

