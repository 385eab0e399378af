"""Memory the plugin adds to a server: each configuration on its own server, one after another, side by side
with vanilla vLLM, after start-up and after the same requests.

    python -m benchmarks.memory_overhead [--models tiny scaled] [--requests 12] [--resend 4] [--json out.json]

For every process of the server (API server, engine core, workers, anything they start) it reads RSS, PSS and
USS (through psutil), the anonymous part of RSS (``RssAnon`` in ``/proc/<pid>/status``: heap, tensors, Python
objects), and groups the resident pages of each mapping by what backs them (anonymous memory, the heap, each
shared library, shared-memory and other files), so a difference between two servers can be traced to a library
loaded, a file mapped, or heap allocated. It prints the totals with their ratio to vanilla, then the largest
per-mapping differences to vanilla. Anonymous memory is the robust figure: on a machine short of memory the
kernel drops file-backed pages (shared libraries) from RSS, which moves RSS by hundreds of MiB between runs;
without swap, anonymous pages stay. Servers run one at a time (the machine
has 2 cores); RSS does not depend on load, so the numbers are comparable across runs of the script.

Phases: ``started`` (healthy and settled), ``served`` (after the same ``--requests`` unique clips, server settings),
``resent`` (the first clip again ``--resend`` times: with the plugin each time under other per-request settings,
which the plugin mixes into the item's hash; vanilla resends it unchanged). ``peak`` is the tree's highest RSS
while serving, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from benchmarks.serving.memory import PeakSampler
from vllm_vtprune.testing.chat import VideoChat
from vllm_vtprune.testing.server import VllmServer
from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl
from vllm_vtprune.testing.videos import KINDS, make_frames, write_mp4

ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
MIB = 2**20
VANILLA = "vanilla"
CONFIGS: dict[str, tuple[list[str], dict[str, str]]] = {
    VANILLA: ([], {"VLLM_PLUGINS": ""}),  # no plugin code loaded at all
    "dormant": ([], {}),  # the plugin installed and loaded, not enabled
    "none": (["--plugin", "vtprune", "--vtprune-method", "none"], {}),
    "vcast": (["--plugin", "vtprune", "--vtprune-preset", "vcast"], {}),
    "vcast+slice-cache": (["--plugin", "vtprune", "--vtprune-preset", "vcast", "--vtprune-slice-cache-mb", "256"], {}),
}
# Per-request settings for the resent clip: each keeps fewer tokens than both plugin servers' settings, so the
# default lower-cost policy accepts them.
RESEND_SETTINGS = [{"method": m, "retention": r} for r in (0.2, 0.1) for m in ("vcast", "stc", "evs", "mssavt")]
PHASES = ("started", "served", "resent")


@dataclass
class ProcessMemory:
    role: str
    rss: int
    pss: int
    uss: int
    anon: int  # RssAnon
    mappings: dict[str, int] = field(default_factory=dict)  # what backs the pages -> resident bytes


@dataclass
class Snapshot:
    processes: list[ProcessMemory]

    def total(self, kind: str) -> int:
        return sum(getattr(p, kind) for p in self.processes)

    def by_role(self, kind: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.processes:
            out[p.role] += getattr(p, kind)
        return dict(out)

    def mappings(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for p in self.processes:
            for name, size in p.mappings.items():
                out[f"{p.role}: {name}"] += size
        return dict(out)


def _backing(path: str) -> str:
    """What backs a mapping, grouped so that servers compare: per library name, one bucket per kind of file."""
    if not path:
        return "[anon]"
    if path.startswith("["):
        return "[stack]" if path.startswith("[stack") else path
    if path.startswith("/dev/shm/") or "(deleted)" in path:
        return "shared memory / deleted files"
    if "vtprune-metrics-" in path or "prometheus" in path:
        return "prometheus multiprocess files"
    name = Path(path).name
    if ".so" in name:
        return re.sub(r"[-.]\w{8}\.so", ".so", name)  # drop the hash manylinux wheels add to bundled libraries
    return "other files"


def _mappings(pid: int) -> dict[str, int]:
    sizes: dict[str, int] = defaultdict(int)
    path = ""
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split(maxsplit=5)
                    path = parts[5].strip() if len(parts) > 5 else ""
                elif line.startswith("Rss:"):
                    sizes[_backing(path)] += int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return dict(sizes)


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _role(process: psutil.Process, root: int) -> str:
    if process.pid == root:
        return "api-server"
    name = process.name()
    if name.startswith("VLLM::EngineCor"):
        return "engine-core"
    if name.startswith("VLLM::Worker"):
        return "worker"
    return "other"


def snapshot(pid: int) -> Snapshot:
    root = psutil.Process(pid)
    processes = []
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            processes.append(ProcessMemory(_role(p, pid), info.rss, info.pss, info.uss, _rss_anon(p.pid),
                                           _mappings(p.pid)))
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError):
            pass
    return Snapshot(processes)


def settle(pid: int, window: float = 6.0, tolerance: int = 2 * MIB, limit: float = 90.0) -> None:
    """Wait until the tree's anonymous memory stops moving (start-up work finishing in the background)."""
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    while time.monotonic() - start < limit:
        now = time.monotonic()
        samples = [(t, r) for t, r in samples if now - t <= window] + [(now, snapshot(pid).total("anon"))]
        if now - start >= window and max(r for _, r in samples) - min(r for _, r in samples) <= tolerance:
            return
        time.sleep(1.0)


def request_clips(directory: Path, count: int) -> list[Path]:
    """The same unique clips for every server: 32 frames of 256x256 at 4 fps, kinds in turn."""
    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        path = directory / f"mem-{KINDS[i % len(KINDS)]}-{i}.mp4"
        if not path.exists():
            write_mp4(make_frames(KINDS[i % len(KINDS)], 32, 256, 256, seed=100 + i), path, 4.0)
        clips.append(path)
    return clips


def measure(model: str, name: str, common: list[str], clips: list[Path], resend: int, log_dir: Path) -> dict:
    args, env = CONFIGS[name]
    plugin = "--plugin" in args
    with VllmServer(model, [*args, *common], env=env, log_path=log_dir / f"memory-{name}.log",
                    startup_timeout=900) as server:
        pid = server.process.pid
        settle(pid)
        started = snapshot(pid)
        chat = VideoChat(server.url, model)
        with PeakSampler(pid) as sampler:
            for clip in clips:
                chat.ask([clip], max_tokens=8)
        settle(pid)
        served = snapshot(pid)
        for i in range(resend):
            chat.ask([clips[0]], max_tokens=8, vtprune=RESEND_SETTINGS[i % len(RESEND_SETTINGS)] if plugin else None)
        settle(pid)
        resent = snapshot(pid)
    return {"config": name, "started": asdict(started), "served": asdict(served), "resent": asdict(resent),
            "peak_rss": sampler.peak_rss}


def _snap(d: dict) -> Snapshot:
    return Snapshot([ProcessMemory(**p) for p in d["processes"]])


def report(model: str, results: list[dict], top: int = 8) -> str:
    vanilla = next(r for r in results if r["config"] == VANILLA)
    base = {phase: _snap(vanilla[phase]) for phase in PHASES}
    lines = [f"\n## {model}\n", "| config | phase | anon MiB | x vanilla | RSS MiB | x vanilla | PSS MiB | x vanilla | "
             "anon: API server | engine core | worker | other |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for phase in PHASES:
            s, b = _snap(r[phase]), base[phase]
            roles = s.by_role("anon")
            lines.append(f"| {r['config']} | {phase} | "
                         + " | ".join(f"{s.total(k) / MIB:.0f} | {s.total(k) / b.total(k):.3f}"
                                      for k in ("anon", "rss", "pss"))
                         + " | " + " | ".join(f"{roles.get(role, 0) / MIB:.0f}"
                                              for role in ("api-server", "engine-core", "worker", "other")) + " |")
        lines.append(f"| {r['config']} | peak RSS while serving | | | {r['peak_rss'] / MIB:.0f} | "
                     f"{r['peak_rss'] / vanilla['peak_rss']:.3f} | | | | | | |")
    lines.append("\nGrowth from `served` to `resent` (anonymous MiB, by process):")
    for r in results:
        after, before = _snap(r["resent"]).by_role("anon"), _snap(r["served"]).by_role("anon")
        grown = {role: after.get(role, 0) - before.get(role, 0) for role in ("api-server", "engine-core", "worker")}
        lines.append(f"- {r['config']}: " + ", ".join(f"{role} {v / MIB:+.1f}" for role, v in grown.items()))
    for r in results:
        if r["config"] == VANILLA:
            continue
        for phase in ("started", "served"):
            mine, theirs = _snap(r[phase]).mappings(), base[phase].mappings()
            diffs = sorted(((mine.get(k, 0) - theirs.get(k, 0), k) for k in set(mine) | set(theirs)),
                           key=lambda d: -abs(d[0]))[:top]
            shown = ", ".join(f"{k} {d / MIB:+.1f}" for d, k in diffs if abs(d) >= MIB / 2)
            lines.append(f"\n{r['config']} vs vanilla, {phase}, resident MiB by mapping: {shown or 'none over 0.5'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "scaled"], help="built-in sizes (tiny, scaled) or paths")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--requests", type=int, default=12)
    p.add_argument("--resend", type=int, default=4, help="times the first clip is sent again (see the phases)")
    p.add_argument("--compiled", action="store_true", help="vLLM's compiled path (default: --enforce-eager, as "
                                                               "the serving benchmark runs)")
    p.add_argument("--processor-cache-gb", type=float, default=None,
                   help="--mm-processor-cache-gb for every server (default: vLLM's own, 4)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if VANILLA not in args.configs:
        args.configs.insert(0, VANILLA)
    common = ["--max-model-len", "8192", "--limit-mm-per-prompt", '{"video": 2, "image": 1}', "--dtype", "float32"]
    if not args.compiled:
        common.append("--enforce-eager")
    if args.processor_cache_gb is not None:
        common += ["--mm-processor-cache-gb", f"{args.processor_cache_gb:g}"]
    clips = request_clips(ARTIFACTS / "bench" / "memory", args.requests)
    everything = {}
    for model_name in args.models:
        model = str(build_tiny_qwen3vl(ARTIFACTS / model_name, size=model_name)) \
            if model_name in ("tiny", "scaled") else model_name
        results = []
        for config in args.configs:
            print(f"[memory] {model_name}: {config} ...", flush=True)
            results.append(measure(model, config, common, clips, args.resend, ARTIFACTS / "bench"))
        everything[model_name] = results
        print(report(model_name, results), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "common": common,
                                         "results": _compact(everything)}, indent=1))


def _compact(results: dict) -> dict:
    """The results without mappings under 1 MiB (hundreds per process; the report has used them already)."""
    def process(p: dict) -> dict:
        return {**p, "mappings": {k: v for k, v in p["mappings"].items() if v >= MIB}}

    return {model: [{**r, **{phase: {"processes": [process(p) for p in r[phase]["processes"]]} for phase in PHASES}}
                    for r in runs] for model, runs in results.items()}


if __name__ == "__main__":
    main()
