"""``benchmarks/`` is not an installed package: make the repository root importable however pytest is run
(``python -m pytest`` adds the working directory to ``sys.path``, the ``pytest`` script does not)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
