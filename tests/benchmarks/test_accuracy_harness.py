"""Bookkeeping of the accuracy harness (no servers): datasets, answer parsing, intervals, ratios, configs."""

from __future__ import annotations

import json

import pytest

from benchmarks.accuracy.client import Answer, Config, video_url
from benchmarks.accuracy.dataset import Question, load_file, parse_letter
from benchmarks.accuracy.report import markdown
from benchmarks.accuracy.stats import OVERALL, disagreements, summarize, wilson
from benchmarks.accuracy.suite import build_configs


@pytest.mark.parametrize(("reply", "letters", "expected"), [
    ("A", "AB", "A"), (" B.", "ABCD", "B"), ("(C) blue", "ABCD", "C"), ("The answer is D.", "ABCD", "D"),
    ("I think B", "ABCD", "B"), ("E", "ABCD", None), ("", "AB", None), ("Apple", "ABCD", None),
])
def test_parse_letter(reply, letters, expected):
    assert parse_letter(reply, letters) == expected


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.94


def test_videomme_style_file(tmp_path):
    (tmp_path / "clips").mkdir()
    records = [
        {"video": "clips/a.mp4", "question": "What colour?", "options": ["A. red", "B. blue", "C. green"],
         "answer": "B", "task_type": "Attribute Perception", "question_id": "q1"},
        {"video": "https://example.com/b.mp4", "question": "How many?", "options": ["1", "2"], "answer": "2"},
        {"video": "/abs/c.mp4", "question": "Where?", "options": ["(A) left", "(B) right"], "answer": "(A)"},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    qs = load_file(path)
    assert qs[0] == Question("q1", str(tmp_path / "clips" / "a.mp4"), "What colour?", ("red", "blue", "green"), "B",
                             "Attribute Perception")
    assert qs[0].prompt == "What colour?\nA. red\nB. blue\nC. green\nAnswer with the option's letter."
    assert (qs[1].video, qs[1].options, qs[1].answer, qs[1].task, qs[1].id) == \
        ("https://example.com/b.mp4", ("1", "2"), "B", "all", "1")
    assert (qs[2].video, qs[2].options, qs[2].answer) == ("/abs/c.mp4", ("left", "right"), "A")
    as_list = tmp_path / "set.json"
    as_list.write_text(json.dumps(records))
    assert load_file(as_list) == qs
    path.write_text(json.dumps({**records[0], "answer": "purple"}) + "\n")
    with pytest.raises(ValueError, match="neither a letter"):
        load_file(path)


def test_video_url_transports(tmp_path):
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"\x00\x01")
    assert video_url(str(clip), "data-url") == "data:video/mp4;base64,AAE="
    assert video_url(str(clip), "file") == f"file://{clip}"
    assert video_url("https://x/y.mp4", "data-url") == "https://x/y.mp4"


def test_configs_and_vtprune_overrides():
    configs = build_configs(["none", "vcast", "stc"], [0.5, 0.25])
    assert [c.name for c in configs] == ["vanilla", "none", "vcast@0.5", "vcast@0.25", "stc@0.5", "stc@0.25"]
    assert configs[0].vtprune is None and configs[0].server == "vanilla"
    assert configs[1].vtprune == {"method": "none", "retention": 1.0}
    assert configs[3].vtprune == {"method": "vcast", "retention": 0.25} and configs[3].server == "plugin"
    assert [c.name for c in build_configs(["vcast"], [0.5], vanilla=False)] == ["vcast@0.5"]
    pre = build_configs(["novelty"], [0.25], vanilla=False)[0]
    assert pre.vtprune == {"method": "none", "pre_tower": {"method": "novelty", "retention": 0.25}}


def test_summary_per_task_ratios_and_disagreements():
    qs = [Question(str(i), "v", "q", ("a", "b"), "A", task) for i, task in enumerate(["x", "x", "y", "y"])]
    configs = [Config("vanilla", "vanilla"), Config("vcast@0.5", "plugin", "vcast", 0.5)]
    replies = {"vanilla": ["A", "A", "A", "B"], "vcast@0.5": ["A", "B", "A", None]}
    answers = [Answer(c, q.id, r, r, r == q.answer, 100 if c == "vanilla" else 60,
                      None if r else "HTTP 500")
               for c, rs in replies.items() for q, r in zip(qs, rs)]
    rows = summarize(qs, configs, answers)
    vanilla, pruned = rows
    assert vanilla["accuracy"]["x"]["accuracy"] == 1.0 and vanilla["accuracy"]["y"]["accuracy"] == 0.5
    assert vanilla["accuracy"][OVERALL] | {"ci95": None} == {"correct": 3, "total": 4, "accuracy": 0.75,
                                                             "ci95": None}
    assert pruned["accuracy"][OVERALL]["accuracy"] == 0.5 and pruned["errors"] == 1
    assert pruned["ratio_to_vanilla"] == {"x": 0.5, "y": 1.0, OVERALL: pytest.approx(2 / 3)}
    assert pruned["mean_prompt_tokens"] == 60 and vanilla["mean_prompt_tokens"] == 100
    assert disagreements(answers, "vcast@0.5", "vanilla") == ["1", "3"]
    result = {"rows": rows, "tasks": ["x", "y"], "command": "c", "model": "m", "questions": 4, "dataset": "d",
              "settings": {"max_tokens": 1}, "machine": {"cpu_count": 2, "load_average": [1.0, 1.0, 1.0]},
              "wall_seconds": 60, "identical_to_vanilla": {"none": []}}
    text = markdown(result)
    assert "| vcast@0.5 | 60 | 50 (15-85) | 50 (9-91) | 50 (9-91) | 0.67x |" in text
    assert "`none`: yes" in text and "1 requests failed" in text
