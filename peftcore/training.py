"""A small training loop for adapters: AdamW over the trainable parameters only, linear warm-up and decay, gradient
accumulation, clipping, bf16 autocast, periodic evaluation, a progress line, adapter-only checkpoints with resume,
seeds, and DistributedDataParallel when ``torch.distributed`` is initialised (``torchrun``). A model sharded with
FSDP2's ``fully_shard`` (for models that do not fit one device) is trained as it is, without DDP.

Data are lists of examples (dicts of equal-length 1-D tensors) or any ``Sequence``; ``collate`` pads a batch.
The loss is the active adapter head's ``loss(logits, labels, attention_mask)``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

from peftcore.interop import read_adapter

Batch = dict[str, Tensor]


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Hyper-parameters; ``batch_size`` is the global batch (split across processes under torchrun)."""

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    gradient_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    eval_every: int | None = None  # optimizer steps between evaluations; None: after every epoch
    checkpoint_every: int | None = None  # optimizer steps between checkpoints (needs checkpoint_dir)
    checkpoint_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "gradient_accumulation"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainingConfig.{name} must be a positive int, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainingConfig.learning_rate must be positive, got {self.learning_rate!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"TrainingConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio!r}.")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("TrainingConfig.checkpoint_every needs checkpoint_dir.")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)


def collate(examples: Sequence[Batch], pad_values: dict[str, int] | None = None) -> Batch:
    """Stack examples into a batch, right-padding 1-D tensors of different lengths (pad 0, or ``pad_values``)."""
    pad_values = pad_values or {}
    batch = {}
    for key in examples[0]:
        tensors = [example[key] for example in examples]
        if tensors[0].dim() == 0:
            batch[key] = torch.stack(tensors)
        else:
            batch[key] = nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_values.get(key, 0))
    return batch


class ProgressLine:
    """One self-overwriting line: step, loss, throughput, ETA (tqdm or rich are not needed)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream, self.start = total, stream, time.perf_counter()
        self.interactive = stream.isatty()

    def update(self, step: int, loss: float, examples: int) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / step * (self.total - step) if step else 0.0
        line = (f"step {step}/{self.total}  loss {loss:.4f}  {examples / max(elapsed, 1e-9):.0f} examples/s  "
                f"eta {eta:.0f}s")
        if self.interactive:
            self.stream.write("\r" + line.ljust(78))
        elif step == self.total or step % max(1, self.total // 10) == 0:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")


def init_distributed_from_env() -> None:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


class Trainer:
    """Trains the adapter ``adapter`` (and its head) of ``model``; everything else stays frozen.

    ``evaluate(model) -> dict`` is called periodically; checkpoints hold only the adapter, its head, the optimizer
    and scheduler, so ``fit`` resumes from ``checkpoint_dir`` after an interruption.
    """

    def __init__(self, model: nn.Module, adapter: str, config: TrainingConfig, train_data: Sequence[Batch],
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 collate_fn: Callable[[Sequence[Batch]], Batch] = collate, progress: bool = True) -> None:
        self.model, self.adapter, self.config = model, adapter, config
        self.train_data, self.evaluate, self.collate_fn, self.progress = train_data, evaluate, collate_fn, progress
        self.rank, self.world = rank_and_world()
        if config.batch_size % (self.world * config.gradient_accumulation):
            raise ValueError(f"batch_size {config.batch_size} must divide evenly over {self.world} processes × "
                             f"{config.gradient_accumulation} accumulation steps.")
        torch.manual_seed(config.seed)
        model.train_adapter(adapter)
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.parameters if p.dim() > 1]
        no_decay = [p for p in self.parameters if p.dim() <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=config.learning_rate)
        self.steps_per_epoch = len(train_data) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_data)} training examples make no full batch of {config.batch_size}.")
        self.total_steps = self.steps_per_epoch * config.epochs
        warmup = int(self.total_steps * config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup
            else max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup)))
        self.step = 0
        self.network = model
        if is_distributed() and not isinstance(model, FSDPModule):
            # only parameters that require grad get DDP hooks: only the adapter is synchronised
            self.network = nn.parallel.DistributedDataParallel(model)

    def batches(self, epoch: int) -> Iterator[list[Batch]]:
        """This process's share of each global batch, as micro-batches; the order depends only on seed and epoch."""
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        order = torch.randperm(len(self.train_data), generator=generator).tolist()
        size, micro = self.config.batch_size, self.config.batch_size // (self.world * self.config.gradient_accumulation)
        for start in range(0, self.steps_per_epoch * size, size):
            mine = order[start:start + size][self.rank::self.world]
            yield [self.collate_fn([self.train_data[i] for i in mine[j:j + micro]]) for j in range(0, len(mine), micro)]

    def loss(self, batch: Batch) -> Tensor:
        labels = batch.pop("labels")
        with torch.autocast(device_type=labels.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            logits = self.network(**batch).logits
        return self.model.heads[self.adapter].loss(logits.float(), labels, batch.get("attention_mask"))

    def fit(self) -> TrainResult:
        self.resume()
        start = time.perf_counter()
        result = TrainResult(steps=0, seconds=0.0)
        display = ProgressLine(self.total_steps) if self.progress and self.rank == 0 else None
        device = next(self.model.parameters()).device
        for epoch in range(self.step // self.steps_per_epoch, self.config.epochs):
            self.model.train()
            for index, micro_batches in enumerate(self.batches(epoch)):
                if epoch * self.steps_per_epoch + index < self.step:
                    continue  # already trained before the interruption
                total = 0.0
                for micro in micro_batches:
                    loss = self.loss({key: t.to(device) for key, t in micro.items()}) / len(micro_batches)
                    loss.backward()
                    total += loss.item()
                if self.config.max_grad_norm:
                    nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                result.losses.append(total)
                if display:
                    display.update(self.step, total, self.step * self.config.batch_size)
                if self.config.eval_every and self.step % self.config.eval_every == 0:
                    result.evaluations.append(self.run_evaluation())
                if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
            if not self.config.eval_every:
                result.evaluations.append(self.run_evaluation())
        if display:
            display.close()
        self.model.eval()
        result.steps, result.seconds = self.step, time.perf_counter() - start
        return result

    def run_evaluation(self) -> dict[str, float]:
        if self.evaluate is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(self.model)
        self.model.train(was_training)
        return {"step": self.step, **metrics}

    def save_checkpoint(self) -> None:
        """Rank 0 writes the adapter (with head) and the optimizer state; the previous checkpoint survives a crash."""
        if self.rank != 0:
            return
        directory = Path(self.config.checkpoint_dir)
        self.model.save_adapter(directory / "adapter", self.adapter)
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        temporary = directory / "trainer_state.pt.tmp"
        torch.save(state, temporary)
        os.replace(temporary, directory / "trainer_state.pt")
        (directory / "progress.json").write_text(json.dumps({"step": self.step, "config": asdict(self.config)}))

    def resume(self) -> None:
        """Continue from ``checkpoint_dir`` when it holds a checkpoint of this run: same weights, optimizer state and
        data order (dropout draws differ)."""
        if not self.config.checkpoint_dir or not (Path(self.config.checkpoint_dir) / "progress.json").is_file():
            return
        directory = Path(self.config.checkpoint_dir)
        saved = read_adapter(self.model, directory / "adapter", with_head=True)
        with torch.no_grad():
            for key, tensor in self.model.adapter_state(self.adapter).items():
                tensor.copy_(saved.state[key])
            if saved.head_state:
                self.model.heads[self.adapter].load_state_dict(saved.head_state, strict=False)  # tied decoder: kept
        state = torch.load(directory / "trainer_state.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = json.loads((directory / "progress.json").read_text())["step"]


def accuracy(model: nn.Module, data: Sequence[Batch], batch_size: int = 256,
             collate_fn: Callable[[Sequence[Batch]], Batch] = collate) -> float:
    """Share of examples whose arg-max logit equals the label."""
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = collate_fn(data[start:start + batch_size])
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / max(1, len(data))


__all__ = ["Batch", "ProgressLine", "TrainResult", "Trainer", "TrainingConfig", "accuracy", "collate",
           "init_distributed_from_env", "rank_and_world"]
