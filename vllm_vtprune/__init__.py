"""vLLM plugin for video-token pruning and ViT feature reuse with Qwen3-VL.

Importing this package is cheap on purpose: a `.pth` start-up hook and vLLM's plugin loader import it in
every process, so heavy imports (torch, vLLM) live in the submodules that need them.
"""

__version__ = "0.1.0"
