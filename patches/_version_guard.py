"""Every vLLM patch names the vLLM line it was written against and stays off on any other."""

from __future__ import annotations

import vllm

from vllm_vtprune.log import get_logger

logger = get_logger(__name__)

SUPPORTED_VLLM = "0.32."


def vllm_supported(patch: str) -> bool:
    if vllm.__version__.startswith(SUPPORTED_VLLM):
        return True
    logger.warning("vtprune: patch %s targets vLLM %sx, found %s; not applied", patch, SUPPORTED_VLLM, vllm.__version__)
    return False
