"""Train the tiny Qwen3-VL on the synthetic video QA, on the CPU, so that accuracy means something.

``python -m vllm_vtprune.testing.train_tiny [OUT_DIR]`` (or ``make train-tiny``) starts from the tiny
random checkpoint (:func:`~vllm_vtprune.testing.tiny_qwen3vl.build_tiny_qwen3vl`: same config, tokenizer,
processor and chat template), trains it on fresh items of the ``train`` split and writes a bf16 checkpoint
with ``training.json`` (the config below) and ``metrics.json`` (per-family test accuracy and every answer,
from transformers' greedy generation on the ``test`` split with the bf16 weights).

Every training item is new (seeds ``step * batch_size + i`` of the train split), so the running training
accuracy is measured on clips the model has never seen. Inputs are built as ``vllm serve`` builds them
(:mod:`vllm_vtprune.testing.qa_inputs`). The answer loss is on the answer letter only; the auxiliary losses
of :mod:`vllm_vtprune.testing.train_targets` bootstrap the random model and their heads are discarded.

Hygiene: linear warm-up then cosine decay, gradient clipping, AdamW without weight decay on norms and
biases, balanced batches, a fixed data order; one data worker process renders the clips while the main
process trains. The state is saved every ``checkpoint_every`` steps and a rerun resumes from it (a shared
machine may kill a long run). Seeded; bit-identical weights across machines or thread counts are not
promised (CPU kernels round differently), the recipe and the accuracy are.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vllm_vtprune.testing import qa_inputs, train_targets
from vllm_vtprune.testing.tiny_qwen3vl import build_tiny_qwen3vl
from vllm_vtprune.testing.video_qa import FAMILIES, generate, split_seeds

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models" / "tiny-videoqa"


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 20  # a multiple of 5: every batch holds each family equally
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 150
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    token_weight: float = 0.5  # auxiliary per-video-token loss on the tower's output
    summary_weight: float = 1.0  # auxiliary clip-summary loss at the answer position
    threads: int = 1  # measured on the shared 2-core machine: at load 5-10, 1 thread ran ~2x faster than 2
    test_count: int = 500
    log_every: int = 50
    checkpoint_every: int = 100


class _TrainItems(torch.utils.data.IterableDataset):
    """Encoded training items in seed order, rendered in a worker process."""

    def __init__(self, model_dir: Path, first: int, count: int):
        self.model_dir, self.first, self.count = model_dir, first, count

    def __iter__(self):
        from transformers import AutoProcessor

        torch.set_num_threads(1)
        processor = AutoProcessor.from_pretrained(self.model_dir)
        for seed in split_seeds("train", self.count, self.first):
            yield encode_item(processor, seed)


def encode_item(processor, seed: int) -> dict:
    """One training sample: the model inputs with the answer as label, and the auxiliary targets."""
    item, frames = generate(seed)
    video = qa_inputs.load_like_vllm(qa_inputs.mp4_bytes(frames, item.fps))
    sample = qa_inputs.encode(processor, video, item.prompt, processor.tokenizer.convert_tokens_to_ids(item.answer))
    grid = sample["video_grid_thw"][0].tolist()
    classes = train_targets.color_classes(video[0][: 2 * grid[0]])
    colors, motions = train_targets.token_targets(classes, grid)
    summary, summary_mask = train_targets.clip_summary(classes, colors, grid)
    return sample | {"family": item.family, "colors": colors, "motions": motions, "summary": summary,
                     "summary_mask": summary_mask}


def _collate(pad_id: int):
    def collate(samples: list[dict]) -> dict:
        batch = qa_inputs.collate(samples, pad_id)
        batch["family"] = [s["family"] for s in samples]
        for key in ("colors", "motions"):
            batch[key] = torch.cat([s[key] for s in samples])
        for key in ("summary", "summary_mask"):
            batch[key] = torch.stack([s[key] for s in samples])
        return batch

    return collate


def _lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Trainer:
    """The model with its auxiliary heads (captured by forward hooks), optimiser and schedule."""

    def __init__(self, init: Path, cfg: TrainConfig):
        from transformers import Qwen3VLForConditionalGeneration

        self.model = Qwen3VLForConditionalGeneration.from_pretrained(init, dtype=torch.float32)
        hidden = self.model.config.text_config.hidden_size
        self.token_head = torch.nn.Linear(hidden, train_targets.TOKEN_OUTPUTS)
        self.summary_head = torch.nn.Linear(hidden, train_targets.SUMMARY_SIZE)
        self.captured: dict[str, torch.Tensor] = {}
        self.model.model.visual.register_forward_hook(
            lambda m, i, out: self.captured.__setitem__("tokens", out.pooler_output))
        self.model.model.language_model.norm.register_forward_hook(
            lambda m, i, out: self.captured.__setitem__("last", out))
        self.params = torch.nn.ModuleList([self.model, self.token_head, self.summary_head])
        self.optimizer = torch.optim.AdamW(_param_groups(self.params, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.cfg = cfg

    def step(self, batch: dict) -> dict[str, float | list]:
        families = batch.pop("family")
        colors, motions = batch.pop("colors"), batch.pop("motions")
        summary, summary_mask = batch.pop("summary"), batch.pop("summary_mask")
        out = self.model(**batch)
        token_loss = train_targets.token_loss(self.token_head(self.captured.pop("tokens")), colors, motions,
                                              train_targets.token_coords(batch["video_grid_thw"]))
        answer_at = batch["labels"] != qa_inputs.IGNORE_INDEX  # predicted from one position earlier
        asked = self.captured.pop("last")[:, :-1][answer_at[:, 1:]]
        summary_loss = train_targets.summary_loss(self.summary_head(asked), summary, summary_mask)
        (out.loss + self.cfg.token_weight * token_loss + self.cfg.summary_weight * summary_loss).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        correct = out.logits[:, :-1].argmax(-1)[answer_at[:, 1:]] == batch["labels"][answer_at]
        return {"families": families, "correct": correct.tolist(), "loss": out.loss.item(),
                "token_loss": token_loss.item(), "summary_loss": summary_loss.item(), "grad_norm": grad_norm.item()}

    def state_dict(self) -> dict:
        return {"params": self.params.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.params.load_state_dict(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


def _save_state(path: Path, trainer: _Trainer, cfg: TrainConfig, progress: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(cfg), "trainer": trainer.state_dict(), **progress}, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, cfg: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    return state if state["config"] == asdict(cfg) else None


def train(out_dir: Path, cfg: TrainConfig, work_dir: Path) -> dict:
    from transformers import AutoProcessor

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    init = build_tiny_qwen3vl(work_dir / "tiny-init", size="tiny", seed=cfg.seed)
    processor = AutoProcessor.from_pretrained(init)
    trainer = _Trainer(init, cfg)
    state_path = work_dir / "train_state.pt"
    progress = {"step": 0, "history": [], "wall_seconds": 0.0, "cpu_seconds": 0.0}
    if (state := _load_state(state_path, cfg)) is not None:
        trainer.load_state_dict(state.pop("trainer"))
        progress = {k: state[k] for k in progress}
        print(f"resuming at step {progress['step']} from {state_path}", flush=True)
    trainer.model.train()
    loader = torch.utils.data.DataLoader(
        _TrainItems(init, progress["step"] * cfg.batch_size, (cfg.steps - progress["step"]) * cfg.batch_size),
        batch_size=cfg.batch_size, num_workers=1, prefetch_factor=4,
        collate_fn=_collate(processor.tokenizer.pad_token_id))

    window = defaultdict(list)
    wall, cpu = time.monotonic() - progress["wall_seconds"], time.process_time() - progress["cpu_seconds"]
    for step, batch in enumerate(loader, start=progress["step"] + 1):
        result = trainer.step(batch)
        for family, ok in zip(result.pop("families"), result.pop("correct")):
            window[family].append(ok)
        for key, value in result.items():
            window[key].append(value)
        progress |= {"step": step, "wall_seconds": time.monotonic() - wall, "cpu_seconds": time.process_time() - cpu}
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "minutes": round(progress["wall_seconds"] / 60, 2),
                   "lr": trainer.schedule.get_last_lr()[0]}
            row |= {k: round(sum(v) / len(v), 4) for k, v in window.items()}
            progress["history"].append(row)
            print(json.dumps(row), flush=True)  # progress of a CLI run (vLLM's logger is unconfigured here)
            window.clear()
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            _save_state(state_path, trainer, cfg, progress)

    model = trainer.model.eval()
    model.to(torch.bfloat16).to(torch.float32)  # evaluate the weights that will be served: bf16, run in fp32
    metrics = evaluate(model, processor, cfg.test_count)
    metrics |= {"train_wall_seconds": round(progress["wall_seconds"]),
                "train_cpu_seconds_main_process": round(progress["cpu_seconds"]),
                "load_average_at_end": os.getloadavg(), "history": progress["history"]}
    save(model, init, out_dir, cfg, metrics)
    state_path.unlink(missing_ok=True)
    return metrics


@torch.inference_mode()
def evaluate(model, processor, count: int, first: int = 0) -> dict:
    """Greedy generation (one token) on ``count`` test items; accuracy per family and overall."""
    right, total, answers = defaultdict(int), defaultdict(int), {}
    for seed in split_seeds("test", count, first):
        item, frames = generate(seed)
        video = qa_inputs.load_like_vllm(qa_inputs.mp4_bytes(frames, item.fps))
        inputs = qa_inputs.encode(processor, video, item.prompt)
        generated = model.generate(**inputs, max_new_tokens=1, do_sample=False)
        answer = processor.tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:])
        answers[seed] = answer
        total[item.family] += 1
        right[item.family] += answer == item.answer
    accuracy = {f: right[f] / total[f] for f in FAMILIES if total[f]}
    return {"test_items": count, "test_accuracy": accuracy,
            "test_accuracy_overall": sum(right.values()) / sum(total.values()), "answers": answers}


def save(model, init: Path, out_dir: Path, cfg: TrainConfig, metrics: dict) -> None:
    """A servable bf16 checkpoint: the init's tokenizer/processor/template files plus the trained weights."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("*.safetensors", "vtprune_build.json"))
    model.to(torch.bfloat16).save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, nargs="?", default=DEFAULT_OUT)
    parser.add_argument("--work-dir", type=Path, default=Path(".artifacts") / "train-tiny")
    for name, value in asdict(TrainConfig()).items():
        if not isinstance(value, tuple):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out_dir, work_dir = args.pop("out_dir").resolve(), args.pop("work_dir")
    metrics = train(out_dir, TrainConfig(**args), work_dir)
    print(json.dumps({k: metrics[k] for k in ("test_accuracy", "test_accuracy_overall", "train_wall_seconds")}))


if __name__ == "__main__":
    main()
