"""One vanilla and one plugin ``vllm serve`` of the committed trained tiny Qwen3-VL, shared by the module's
tests, and their command lines (for a server started like them); the plugin's settings are chosen per request.
``benchmarks/`` is not an installed package, so the repository root goes on ``sys.path`` (as in
``tests/benchmarks``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.serving.servers import ServerSpec, common_args, server_specs, side_by_side  # noqa: E402
from vllm_vtprune.testing.train_tiny import DEFAULT_OUT as TRAINED_TINY  # noqa: E402

ARTIFACTS = ROOT / ".artifacts"


@pytest.fixture(scope="session")
def videoqa_model() -> Path:
    if not (TRAINED_TINY / "model.safetensors").is_file():
        pytest.fail(f"{TRAINED_TINY} is missing: it is committed; `make train-tiny` rebuilds it")
    return TRAINED_TINY


@pytest.fixture(scope="session")
def videoqa_metrics(videoqa_model) -> dict:
    return json.loads((videoqa_model / "metrics.json").read_text())


@pytest.fixture(scope="session")
def qa_media() -> Path:
    return ARTIFACTS / "accuracy-tests" / "media"


@pytest.fixture(scope="session")
def qa_server_specs(qa_media) -> dict[str, ServerSpec]:
    """The vanilla and plugin servers' flags and environment, as the accuracy harness starts them."""
    qa_media.mkdir(parents=True, exist_ok=True)
    return server_specs(common_args(True, 1, qa_media, []), ["--plugin", "vtprune", "--vtprune-method", "none",
                                                             "--vtprune-request-overrides", "any"])


@pytest.fixture(scope="module")  # stopped with its module: no idle engines under later tests
def qa_servers(videoqa_model, qa_server_specs) -> Iterator[dict[str, str]]:
    """``{"vanilla": url, "plugin": url}``, started side by side."""
    with side_by_side(str(videoqa_model), qa_server_specs, ARTIFACTS / "accuracy-tests" / "logs") as servers:
        yield {name: server.url for name, server in servers.items()}
