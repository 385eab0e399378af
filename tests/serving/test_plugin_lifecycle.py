"""Issue 2: the plugin loads everywhere, stays dormant unless enabled, and guards its options at start-up."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vllm_vtprune.testing.server import CPU_ENV, run_serve_expecting_failure, vllm_executable

ACTIVE_LINE = re.compile(r"^\(([\w-]+) pid=(\d+)\).*vtprune active in process")


def test_enabled_plugin_is_active_in_api_server_engine_core_and_worker(plugin_server):
    plugin_server  # started: its log is complete up to readiness
    log = plugin_server.log_path.read_text()
    processes = {m.group(1): m.group(2) for line in log.splitlines() if (m := ACTIVE_LINE.match(line))}
    kinds = {"Worker" if "Worker" in name else name for name in processes}  # Worker, VllmWorker-0, ...
    assert {"APIServer", "EngineCore", "Worker"} <= kinds, processes
    assert len(set(processes.values())) == len(processes)  # really distinct processes
    assert '"method": "vcast"' in log and '"retention": 0.25' in log


def test_loaded_but_not_enabled_plugin_stays_dormant(dormant_server):
    assert "vtprune active" not in dormant_server.log_path.read_text()


def test_video_request_answers_with_and_without_plugin(vanilla_server, plugin_server, chat, videos):
    for server in (vanilla_server, plugin_server):
        reply = chat(server).ask([videos["moving_objects"]])
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage.completion_tokens == 8


def test_dormant_plugin_is_token_identical_to_no_plugin(vanilla_server, dormant_server, chat, videos):
    for kind in ("moving_objects", "scene_cut"):
        a = chat(vanilla_server).ask([videos[kind]], max_tokens=12)
        b = chat(dormant_server).ask([videos[kind]], max_tokens=12)
        assert a.usage.prompt_tokens == b.usage.prompt_tokens
        assert [t.token for t in a.choices[0].logprobs.content] == [t.token for t in b.choices[0].logprobs.content]


def test_help_lists_plugin_options(tiny_model):
    out = subprocess.run([vllm_executable(), "serve", "--help=all"], capture_output=True, text=True,
                         env={**__import__("os").environ, **CPU_ENV}, timeout=180).stdout
    for flag in ("--plugin", "--vtprune-method", "--vtprune-retention", "--vtprune-preset", "--vtprune-options"):
        assert flag in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--plugin", "vtprune", "--vtprune-method", "bogus"], "--vtprune-method: invalid choice: 'bogus'"),
        (["--plugin", "vtprune", "--vtprune-retention", "1.5"], "--vtprune-retention: must be in (0, 1], got 1.5"),
        (["--plugin", "vtprune", "--vtprune-retention", "0"], "--vtprune-retention: must be in (0, 1], got 0"),
        (["--vtprune-method", "vcast"], "--vtprune-method needs --plugin vtprune"),
        (["--plugin", "other"], "--plugin 'other' is unknown"),
        (["--plugin", "vtprune", "--vtprune-options", '{"no_such_option": 1}'], "no_such_option"),
        (["--plugin", "vtprune", "--vtprune-cacher", '{"recompute_ratio": 2}'],
         "vtprune.cacher.recompute_ratio must be in (0, 1], got 2"),
        (["--plugin", "vtprune", "--vtprune-slice-cache-mb", "-1"], "--vtprune-slice-cache-mb: must be >= 0"),
        (["--plugin", "vtprune", "--vtprune-request-overrides", "all"], "--vtprune-request-overrides: invalid choice"),
        (["--plugin", "vtprune", "--video-pruning-rate", "0.5"],
         "--video-pruning-rate is vLLM's own EVS; with --plugin vtprune use --vtprune-method evs"),
    ],
)
def test_bad_plugin_options_stop_vllm_serve_at_startup(tiny_model, args, expected):
    assert expected in run_serve_expecting_failure(tiny_model, args)


def test_a_model_outside_the_qwen3_vl_family_is_refused_at_startup(tiny_model, tmp_path):
    """Never served silently unpruned: the refusal names the architectures the plugin supports."""
    config = json.loads((Path(tiny_model) / "config.json").read_text())["text_config"]
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "qwen3",
                                                      "architectures": ["Qwen3ForCausalLM"]}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tiny_model) / name, tmp_path / name)
    out = run_serve_expecting_failure(tmp_path, ["--plugin", "vtprune"])
    assert "--plugin vtprune supports ['Qwen3VLForConditionalGeneration', 'Qwen3VLMoeForConditionalGeneration', " \
           "'Qwen3_5ForConditionalGeneration', 'Qwen3_5MoeForConditionalGeneration']; this model is " \
           "['Qwen3ForCausalLM']" in out
