"""Loggers that print through vLLM's logging setup.

vLLM configures handlers and ``VLLM_LOGGING_LEVEL`` for the ``vllm`` logger tree only, so a plugin's logger
named ``vllm_vtprune.x`` would be silent; ours live at ``vllm.vtprune.x``.
"""

from __future__ import annotations

import logging

from vllm.logger import init_logger


def get_logger(module: str) -> logging.Logger:
    return init_logger("vllm.vtprune." + module.removeprefix("vllm_vtprune."))
