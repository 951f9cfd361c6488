"""A small training loop for adapters: AdamW over the trainable parameters only, linear warm-up and decay, gradient
accumulation, clipping, bf16 autocast, periodic evaluation, a progress line, adapter-only checkpoints with resume,
seeds, and DistributedDataParallel when ``torch.distributed`` is initialised (``torchrun``). A model sharded with
FSDP2's ``fully_shard`` (for models that do not fit one device) is trained as it is, without DDP.

Data are lists of examples (dicts of equal-length 1-D tensors) or any ``Sequence``; ``collate`` pads a batch.
The loss is the active adapter head's ``loss(logits, labels, attention_mask)``, or a ``loss_fn`` given (contrastive
embedding losses compare several forwards). Training a fusion adds AdapterHub's fusion regulariser to the loss.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

from peftcore import heads, io, placement
from peftcore.allocator import retain_freed_memory
from peftcore.composition import Block, Fuse, parse_setup
from peftcore.configs import members
from peftcore.interop import ours, read_adapter
from peftcore.loraplus import loraplus_param_groups
from peftcore.methods import methods_for
from peftcore.methods.base import TrainingCallback
from peftcore.progress import ProgressLine

Batch = dict[str, Tensor]
RUN_ONLY = ("eval_every", "checkpoint_every", "checkpoint_dir", "gradient_checkpointing",
            "retain_cpu_memory")  # settings a resumed run may change: they do not change what it computes
PROGRESS_FILE, STATE_FILE = "progress.json", "trainer_state.pt"


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Hyper-parameters of one training run.

    Training makes ``epochs`` passes over the data, ``batch_size`` examples per optimizer step over all processes
    (each takes its share under torchrun), in ``gradient_accumulation`` micro-batches per step. AdamW's learning
    rate rises linearly from 0 to ``learning_rate`` over the first ``warmup_ratio`` of the steps, then decays
    linearly to 0; ``weight_decay`` is its decoupled weight decay, which biases and norms (1-D parameters) do not get.
    ``max_grad_norm`` clips the gradient's global norm (None: no clipping); ``bf16`` runs forward passes under bf16
    autocast (the loss is computed in fp32). ``eval_every`` optimizer steps between evaluations (None: after every
    epoch). Checkpoints go into ``checkpoint_dir`` (None: none), where ``fit`` also looks for one to resume: after the
    last step, and every ``checkpoint_every`` steps if set (which needs ``checkpoint_dir``). ``seed`` seeds the
    model's random draws (dropout) and the data order. ``adapter_drop`` trains robust to AdapterDrop (Rücklé et al.,
    2021): each step skips the adapters of the first k layers, k drawn uniformly from 0 to the layer count - 1 (by
    ``seed`` and the step, so a resumed run draws the same); evaluation and the trained model run every layer.
    ``gradient_checkpointing`` recomputes each layer in the backward pass (``model.gradient_checkpointing_enable``):
    the same gradients in less memory, for about a third more time per step.
    ``loraplus_lr_ratio`` trains each LoRA's B at that multiple of the learning rate (LoRA+, PEFT's parameter groups:
    peftcore/loraplus.py); None: one rate. ``retain_cpu_memory``: on CPU, glibc keeps freed memory for the next step
    rather than returning it to the system (peftcore/allocator.py: no page faults per step, which cost up to a
    quarter of a roberta-base step), process-wide.
    """

    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    gradient_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    bf16: bool = False
    eval_every: int | None = None
    checkpoint_every: int | None = None
    checkpoint_dir: str | None = None
    seed: int = 0
    adapter_drop: bool = False
    gradient_checkpointing: bool = False
    loraplus_lr_ratio: float | None = None
    retain_cpu_memory: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "gradient_accumulation"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainingConfig.{name} must be a positive int, got {value!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainingConfig.learning_rate must be positive, got {self.learning_rate!r}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"TrainingConfig.warmup_ratio must lie in [0, 1), got {self.warmup_ratio!r}.")
        if self.loraplus_lr_ratio is not None and not self.loraplus_lr_ratio > 0:
            raise ValueError(f"TrainingConfig.loraplus_lr_ratio must be positive or None, got "
                             f"{self.loraplus_lr_ratio!r}.")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError("TrainingConfig.checkpoint_every needs checkpoint_dir.")


@dataclass
class TrainResult:
    """What ``Trainer.fit`` did: ``steps`` optimizer steps, the ``losses`` of each and ``evaluations``
    (``{"step": n, **metrics}`` each), all counting those of the run this call resumed, from the checkpoint of step
    ``resumed_from`` (0: it started afresh); ``seconds`` is the wall time of this call."""

    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0

    @property
    def was_finished(self) -> bool:
        """The checkpoint already held the whole run, so this call trained nothing."""
        return 0 < self.resumed_from == self.steps


def collate(examples: Sequence[Batch], pad_values: Mapping[str, int] | None = None) -> Batch:
    """Stack ``examples`` (dicts of tensors with the same keys) into a batch: 0-D tensors (labels) are stacked, 1-D
    tensors of different lengths right-padded with the value ``pad_values`` gives their key
    (``{"input_ids": tokenizer.pad_token_id}``; 0 for the others)."""
    pad_values = pad_values or {}
    batch = {}
    for key in examples[0]:
        tensors = [example[key] for example in examples]
        if tensors[0].dim() == 0:
            batch[key] = torch.stack(tensors)
        else:
            batch[key] = nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=pad_values.get(key, 0))
    return batch


def init_distributed_from_env() -> None:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def is_distributed() -> bool:
    """Whether this process belongs to an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


class Trainer:
    """Trains the adapter ``adapter`` (and its head) of ``model``; everything else stays frozen.

    Checkpoints hold only the adapter, its head, the optimizer and scheduler state and the run's history, so ``fit``
    resumes from ``config.checkpoint_dir`` after an interruption; a checkpoint of another run (another adapter or
    head config, training settings or training data) is refused with the differences named, and a finished one is
    reported as such (``TrainResult.was_finished``) without training.

    ``model`` holds adapter ``adapter`` and, for the loss, a head of the same name; ``config`` holds the
    hyper-parameters. Where ``adapter`` names a fusion (``add_adapter_fusion(..., name=adapter)``), its fusion
    layers and head train and the adapters it fuses stay frozen (``train_adapter_fusion``), and the fusion
    regulariser (``fusion_regularization_loss``) is added to each step's loss. ``train_data`` are examples (dicts of
    1-D tensors, with ``"labels"``) indexed by position, which ``collate_fn`` turns into batches (default:
    ``collate``, padding with 0). ``evaluate``, if given, is called as ``evaluate(model) -> {metric: value}`` in
    eval mode without gradients after every epoch (or every ``config.eval_every`` steps), and each result is shown
    as a line of the progress display, which ``progress`` turns on (on standard error, rank 0 only). ``loss_fn``,
    called as ``loss_fn(model, batch) -> loss`` if given, replaces the head's loss
    (``peftcore.embeddings.EmbeddingLoss``); it runs under the same autocast. ``setup`` (a composition holding
    ``adapter``) is what runs while only ``adapter`` trains (MAD-X: ``Stack("lang", "task")``). Where ``adapter``
    names a head without an adapter, that head trains alone on the frozen model (a probe), without checkpoints.
    """

    def __init__(self, model: nn.Module, adapter: str, config: TrainingConfig, train_data: Sequence[Batch],
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 collate_fn: Callable[[Sequence[Batch]], Batch] = collate, progress: bool = True,
                 loss_fn: Callable[[nn.Module, Batch], Tensor] | None = None, setup: Block | None = None) -> None:
        self.model, self.adapter, self.config, self.loss_fn = model, adapter, config, loss_fn
        self.is_fusion = adapter in model.fusion_configs
        self.is_head = adapter not in model.adapter_configs and not self.is_fusion  # a head alone: a frozen model's
        if self.is_head and config.checkpoint_dir:
            raise ValueError(f"{adapter!r} is a head without an adapter; checkpoints hold adapters: train without "
                             "checkpoint_dir.")
        self.training_setup = parse_setup(setup) if setup is not None else None
        if self.training_setup is not None and adapter not in self.training_setup.flatten():
            raise ValueError(f"the setup {self.training_setup!r} does not run adapter {adapter!r}, which is to train.")
        self.train_data, self.evaluate, self.collate_fn, self.progress = train_data, evaluate, collate_fn, progress
        self.rank, self.world = rank_and_world()
        if config.batch_size % (self.world * config.gradient_accumulation):
            raise ValueError(f"batch_size {config.batch_size} must divide evenly over {self.world} processes × "
                             f"{config.gradient_accumulation} accumulation steps.")
        self.steps_per_epoch = len(train_data) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_data)} training examples make no full batch of {config.batch_size}; "
                             f"lower the batch size to {len(train_data)} or less.")
        if config.gradient_checkpointing and not callable(getattr(model, "gradient_checkpointing_enable", None)):
            raise TypeError(f"TrainingConfig.gradient_checkpointing needs a model with gradient_checkpointing_enable "
                            f"(peftcore.models' classes); {type(model).__name__} has none.")
        torch.manual_seed(config.seed)
        if self.is_fusion:
            if adapter in model.heads:
                model.active_head = adapter
            model.train_adapter_fusion(self.setup())
        elif self.is_head:
            if adapter not in model.heads:
                raise KeyError(f"no adapter, fusion or head named {adapter!r}; this model has adapters "
                               f"{sorted(model.adapter_configs)}, fusions {sorted(model.fusion_configs)} and heads "
                               f"{sorted(model.heads)}.")
            model.set_active_adapters(None)
            model.active_head = adapter
            model.train()
            model.freeze_model(True)
            heads.train(model, adapter)
        else:
            model.train_adapter(adapter)
            if self.training_setup is not None:  # e.g. MAD-X: Stack(language, task), only the task adapter trains
                model.set_active_adapters(self.training_setup)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in self.parameters if p.dim() > 1]
        no_decay = [p for p in self.parameters if p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if config.loraplus_lr_ratio is not None:
            groups = loraplus_param_groups(model, config.learning_rate, config.loraplus_lr_ratio, config.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
        self.total_steps = self.steps_per_epoch * config.epochs
        warmup = int(self.total_steps * config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / (warmup + 1) if step < warmup
            else max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup)))
        self.callbacks = [] if self.is_fusion or self.is_head else training_callbacks(model, adapter, self.total_steps)
        self.step = 0
        self.run_fingerprint: dict[str, Any] | None = None  # computed on first use: the data are hashed once
        self.network = model
        if is_distributed() and not isinstance(model, FSDPModule):
            # only parameters that require grad get DDP hooks: only the adapter is synchronised; AdapterDrop leaves
            # the skipped layers' adapters without gradients
            self.network = nn.parallel.DistributedDataParallel(model, find_unused_parameters=config.adapter_drop)

    def setup(self) -> str | Block | None:
        """What runs while training: the setup given, the adapter, the fusion of the adapters it fuses, or none (a
        head alone)."""
        if self.is_fusion:
            return Fuse(*self.model.fused_adapters[self.adapter], name=self.adapter)
        return None if self.is_head else self.training_setup or self.adapter

    def batches(self, epoch: int) -> Iterator[list[Batch]]:
        """This process's share of each global batch of ``epoch``, as micro-batches; the order depends only on the
        seed and ``epoch``."""
        generator = torch.Generator().manual_seed(self.config.seed + epoch)
        order = torch.randperm(len(self.train_data), generator=generator).tolist()
        size, micro = self.config.batch_size, self.config.batch_size // (self.world * self.config.gradient_accumulation)
        for start in range(0, self.steps_per_epoch * size, size):
            mine = order[start:start + size][self.rank::self.world]
            yield [self.collate_fn([self.train_data[i] for i in mine[j:j + micro]]) for j in range(0, len(mine), micro)]

    def drop_adapters(self, training: bool) -> None:
        """With ``config.adapter_drop``, skip the adapters of the first k layers from now on: before a ``training``
        step k is drawn by the seed and the step; otherwise (evaluation, the trained model) k is 0."""
        if self.config.adapter_drop:
            layers = len(self.model.layers)
            skipped = random.Random(f"adapter_drop {self.config.seed} {self.step}").randrange(layers) if training else 0
            self.model.set_active_adapters(self.setup(), skip_layers=range(skipped))

    def loss(self, batch: Batch) -> Tensor:
        """The adapter head's loss on ``batch``, whose ``"labels"`` it pops (or ``loss_fn``'s), plus the fusion
        regulariser when a fusion trains and the methods' (AdaLoRA's); the forward runs under bf16 autocast if
        ``config.bf16``."""
        device = next(iter(batch.values())).device
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            if self.loss_fn is not None:
                loss = self.loss_fn(self.network, batch).float()
            else:
                labels = batch.pop("labels")
                logits = self.network(**batch).logits
                loss = self.model.heads[self.adapter].loss(logits.float(), labels, batch.get("attention_mask"))
        # AdapterHub back-propagates the regulariser after the optimizer step (adapters/trainer.py:261), so it acts a
        # step late and unclipped; here it is part of the step's loss
        regulariser = self.model.fusion_regularization_loss() if self.is_fusion else None
        loss = loss if regulariser is None else loss + regulariser
        return sum((callback.regularisation() for callback in self.callbacks), loss)

    def fit(self) -> TrainResult:
        """Train to the last step (resuming from ``config.checkpoint_dir`` when it holds this run) and return what
        was done; the model is left in eval mode."""
        result = self.resume()
        start = time.perf_counter()
        display = ProgressLine(self.total_steps, first=self.step) if self.progress and self.rank == 0 else None
        if display and result.resumed_from:
            display.note(f"step {self.step}/{self.total_steps}  " + (
                f"the checkpoint in {self.config.checkpoint_dir} is a finished run: nothing to train"
                if self.step >= self.total_steps else f"resumed from the checkpoint in {self.config.checkpoint_dir}"))
        device = next(self.model.parameters()).device
        if device.type == "cpu" and self.config.retain_cpu_memory:
            retain_freed_memory()
        for epoch in range(self.step // self.steps_per_epoch, self.config.epochs):
            self.model.train()
            for index, micro_batches in enumerate(self.batches(epoch)):
                if epoch * self.steps_per_epoch + index < self.step:
                    continue  # already trained before the interruption
                self.drop_adapters(training=True)
                total = 0.0
                for micro in micro_batches:
                    loss = self.loss({key: t.to(device) for key, t in micro.items()}) / len(micro_batches)
                    loss.backward()
                    total += loss.item()
                if self.config.max_grad_norm:
                    nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                for callback in self.callbacks:
                    callback.after_step(self.step)
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                result.losses.append(total)
                if display:
                    display.update(self.step, total, (self.step - result.resumed_from) * self.config.batch_size)
                epoch_ends = index == self.steps_per_epoch - 1
                if (self.step % self.config.eval_every == 0) if self.config.eval_every else epoch_ends:
                    self.drop_adapters(training=False)
                    self.run_evaluation(result, display)  # before the checkpoint, which keeps it
                if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint(result)
        if self.config.checkpoint_dir and self.step > result.resumed_from and (
                not self.config.checkpoint_every or self.step % self.config.checkpoint_every):
            self.save_checkpoint(result)  # the last step, so that a rerun finds the run finished
        if display:
            display.close()
        self.drop_adapters(training=False)
        self.model.eval()
        result.steps, result.seconds = self.step, time.perf_counter() - start
        return result

    def run_evaluation(self, result: TrainResult, display: ProgressLine | None = None) -> None:
        """Call ``evaluate`` (if any) in eval mode without gradients, append its metrics and the step to the
        evaluations of ``result`` and show them on ``display`` (None: nowhere); the model's mode is restored."""
        if self.evaluate is None:
            return
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(self.model)
        self.model.train(was_training)
        result.evaluations.append({"step": self.step, **metrics})
        if display:
            display.note(f"step {self.step}/{self.total_steps}  "
                         + "  ".join(f"{name} {value:.4f}" for name, value in metrics.items()))

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to resume it, JSON-ready: the training settings (but where
        and how often to evaluate and save), the adapter's and head's configs, and the training data's digest."""
        if self.run_fingerprint is not None:
            return self.run_fingerprint
        digest = hashlib.sha256()
        for index in range(len(self.train_data)):
            for key, tensor in sorted(self.train_data[index].items()):
                digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        head = self.model.heads[self.adapter].config if self.adapter in self.model.heads else None
        training = {key: value for key, value in asdict(self.config).items() if key not in RUN_ONLY}
        data = {"examples": len(self.train_data), "sha256": digest.hexdigest()}
        adapter = ({"fusion": self.model.fusion_configs[self.adapter].to_dict(),
                    "fuses": list(self.model.fused_adapters[self.adapter])} if self.is_fusion
                   else None if self.is_head else self.model.adapter_configs[self.adapter].to_dict())
        self.run_fingerprint = json.loads(json.dumps({"training": training, "adapter": adapter, "head": head,
                                                      "data": data}))
        return self.run_fingerprint

    def save_checkpoint(self, result: TrainResult | None = None) -> None:
        """Rank 0 writes the adapter (with head), the optimizer and scheduler state and the run's history (that of
        ``result``; None: none) into ``checkpoint_dir`` in one atomic swap: a crash leaves the previous checkpoint
        whole."""
        if self.rank != 0:
            return
        result = result or TrainResult(steps=self.step, seconds=0.0)
        progress = {"step": self.step, "total_steps": self.total_steps, "fingerprint": self.fingerprint(),
                    "losses": result.losses, "evaluations": result.evaluations}
        with io.atomic_directory_write(self.config.checkpoint_dir) as scratch:
            if self.is_fusion:
                self.model.save_adapter_fusion(scratch / "adapter", self.adapter,
                                               with_head=self.adapter in self.model.heads)
            else:
                self.model.save_adapter(scratch / "adapter", self.adapter)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "callbacks": [callback.state_dict() for callback in self.callbacks]}, scratch / STATE_FILE)
            io.write_json(scratch / PROGRESS_FILE, progress)

    def resume(self) -> TrainResult:
        """Continue from ``checkpoint_dir`` when it holds a checkpoint of this run: same weights, optimizer state,
        data order and history (dropout draws differ). A checkpoint of another run is refused, naming what differs.
        Returns the history so far (empty when there is no checkpoint)."""
        directory = Path(self.config.checkpoint_dir or "")
        if not self.config.checkpoint_dir or not (directory / PROGRESS_FILE).is_file():
            return TrainResult(steps=0, seconds=0.0)
        progress = io.read_json(directory / PROGRESS_FILE)
        self.check_same_run(directory, progress)
        if self.is_fusion:
            fusion = ours.read_fusion(directory / "adapter", with_head=True)
            state, head_state = fusion.state, fusion.head.state if fusion.head else None
            expected = self.model.fusion_state(self.adapter)
        else:
            saved = read_adapter(self.model, directory / "adapter", with_head=True)
            state, head_state, expected = saved.state, saved.head_state, self.model.adapter_state(self.adapter)
        head = self.model.heads[self.adapter].state_dict() if head_state else {}
        problems = io.tensor_problems(state, expected)
        problems += [(f"head {title}", entries) for title, entries in
                     io.tensor_problems(head_state or {}, {k: t for k, t in head.items() if k in (head_state or {})})]
        if any(entries for _, entries in problems):
            raise ValueError(io.problem_report(
                f"the checkpoint in {directory} does not fit adapter {self.adapter!r}:", problems,
                "Delete it, or choose another checkpoint_dir, to start afresh."))
        with torch.no_grad():
            for key, tensor in expected.items():
                tensor.copy_(state[key])
            if head_state:
                self.model.heads[self.adapter].load_state_dict(head_state, strict=False)  # tied decoder: kept
        state = torch.load(directory / STATE_FILE, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for callback, callback_state in zip(self.callbacks, state.get("callbacks", []), strict=False):
            callback.load_state_dict(callback_state)
        self.step = int(progress["step"])
        return TrainResult(steps=self.step, seconds=0.0, losses=list(progress.get("losses", [])),
                           evaluations=list(progress.get("evaluations", [])), resumed_from=self.step)

    def check_same_run(self, directory: Path, progress: Mapping[str, Any]) -> None:
        """Refuse the checkpoint in ``directory``, whose ``progress`` record holds its run's fingerprint, when it was
        made with another adapter or head config, other training settings or other data."""
        now = self.fingerprint()
        then = progress.get("fingerprint") or {"training": {key: value for key, value in progress.get("config", {})
                                                            .items() if key not in RUN_ONLY}}
        differences = []
        methods = [(config or {}).get("architecture") or "bottleneck"  # AdapterHub writes none for bottlenecks
                   for config in (then.get("adapter"), now["adapter"])]
        if "adapter" in then and methods[0] != methods[1]:
            differences.append(f"adapter config: a {methods[0]} adapter then, a {methods[1]} adapter now")
        for part, what in (("adapter", "adapter config"), ("head", "head config"), ("training", "training settings")):
            same_method = part != "adapter" or methods[0] == methods[1]
            changed = changed_fields(then[part], now[part]) if part in then and same_method else []
            if changed:
                more = f"; ... ({len(changed) - 8} more)" if len(changed) > 8 else ""
                differences.append(f"{what}: {'; '.join(changed[:8])}{more}")
        if "data" in then and then["data"] != now["data"]:
            count_then, count_now = then["data"]["examples"], now["data"]["examples"]
            differences.append(f"training data: {count_then:,} examples then, {count_now:,} now"
                               if count_then != count_now
                               else f"training data: {count_now:,} examples then and now, but other ones")
        if differences:
            raise ValueError(f"the checkpoint in {directory} was made by another run, so this one cannot resume it:\n"
                             + "".join(f"  {line}\n" for line in differences)
                             + "Delete it, or choose another checkpoint_dir, to start afresh; or rerun with the "
                               "settings it was made with.")


def training_callbacks(model: nn.Module, adapter: str, total_steps: int) -> list[TrainingCallback]:
    """What the methods of adapter ``adapter`` of ``model`` ask of a training run of ``total_steps`` optimizer steps
    beside the optimizer step (``Method.training_callback``: AdaLoRA's regulariser and rank allocator)."""
    placed = placement.placed(model, adapter)
    callbacks = []
    for member in members(model.adapter_configs[adapter]):
        for method in methods_for(member):
            callback = method.training_callback(member, [m for _, m in placed if type(m) is method], total_steps)
            if callback is not None:
                callbacks.append(callback)
    return callbacks


def changed_fields(then: Any, now: Any, path: str = "") -> list[str]:
    """``"field: THEN then, NOW now"`` for every leaf where the JSON values ``then`` and ``now`` differ, each field a
    dotted path into the nesting below ``path``."""
    if isinstance(then, dict) and isinstance(now, dict):
        return [line for key in sorted(set(then) | set(now), key=str)
                for line in changed_fields(then.get(key), now.get(key), f"{path}.{key}" if path else str(key))]
    if isinstance(then, list) and isinstance(now, list) and len(then) == len(now):
        return [line for i, (a, b) in enumerate(zip(then, now, strict=True))
                for line in changed_fields(a, b, f"{path}.{i}" if path else str(i))]
    return [] if then == now else [f"{path or 'value'}: {json.dumps(then)} then, {json.dumps(now)} now"]


def accuracy(model: nn.Module, data: Sequence[Batch], batch_size: int = 256,
             collate_fn: Callable[[Sequence[Batch]], Batch] = collate) -> float:
    """Share of the examples ``data`` (with ``"labels"``) whose arg-max logit equals the label: ``model``'s output
    has ``.logits`` (B, L); each forward pass takes ``batch_size`` examples, batched by ``collate_fn``."""
    correct = 0
    for start in range(0, len(data), batch_size):
        batch = collate_fn(data[start:start + batch_size])
        labels = batch.pop("labels")
        correct += (model(**batch).logits.argmax(-1) == labels).sum().item()
    return correct / max(1, len(data))


__all__ = ["Batch", "ProgressLine", "TrainResult", "Trainer", "TrainingConfig", "accuracy", "collate",
           "init_distributed_from_env", "rank_and_world"]
