"""Stage timings that do not add device synchronisations: CUDA events on GPU, wall clock on CPU."""

from __future__ import annotations

import time

import torch


class StageTimer:
    """``mark(name)`` ends a stage; ``seconds()`` reads all stages (best after the device has synced anyway)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = [("start", self._now())]

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def mark(self, name: str) -> None:
        self.marks.append((name, self._now()))

    def seconds(self) -> dict[str, float]:
        """Seconds of every stage. CUDA's ``elapsed_time`` needs both events completed, so this waits for the last
        mark's event: no wait once the device has synced (e.g. a ``.tolist()`` after the stages), else until the
        recorded work is done (one event wait, not a device synchronisation)."""
        if self.cuda:
            self.marks[-1][1].synchronize()
        out = {}
        for (_, start), (name, end) in zip(self.marks, self.marks[1:]):
            out[name] = start.elapsed_time(end) / 1e3 if self.cuda else end - start
        return out
