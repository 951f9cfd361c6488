"""``peftcore compare``: several methods trained on the same data, beside a linear probe of the frozen model, in a
table and a chart of accuracy against trainable parameters."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore import training
from peftcore.cli.checkpoints import load, mean_pooled, model_dir
from peftcore.cli.finetune import Run, Task, adapter_names, train_and_test
from peftcore.models.pretrained import PretrainedEncoder

COMPARE_COLUMNS = ("method", "trainable params", "trainable %", "test accuracy", "train time (s)",
                   "inference time (s)", "adapter size (KiB)", "directory")
COMPARE_DEFAULT = ("lora[r=8, alpha=16]", "ia3", "seq_bn", "par_bn", "prefix_tuning", "unipelt")
PROBE = "linear probe (frozen model)"


def check_methods(methods: Sequence[str], model: PretrainedEncoder) -> None:
    """Refuse, before anything trains, every method string that does not parse or does not fit the model."""
    problems = []
    for index, method in enumerate(methods):
        try:
            model.add_adapter(f"check_{index}", method)
        except (ValueError, TypeError, KeyError) as error:
            problems.append(f"  {method!r}: {error}")
    if problems:
        raise ValueError(f"{len(problems)} of {len(methods)} methods cannot be trained; nothing was:\n"
                         + "\n".join(problems))


def linear_probe(task: Task, seed: int) -> Run:
    """The frozen model's baseline: logistic regression on its mean-pooled final hidden states (standardised),
    fitted with L-BFGS on the training split and tested on the test split."""
    start = time.perf_counter()
    model = load(task.directory, quiet=True).eval()

    def features(examples: list[dict]) -> tuple[Tensor, Tensor]:
        parts, labels = [], []
        for first in range(0, len(examples), 256):
            batch = task.pad(examples[first:first + 256])
            labels.append(batch.pop("labels"))
            parts.append(mean_pooled(model, batch))
        return torch.cat(parts), torch.cat(labels)

    with torch.no_grad():  # not inference_mode: the features feed the probe's autograd
        train_x, train_y = features(task.splits[0])
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    torch.manual_seed(seed)
    linear = nn.Linear(train_x.shape[1], len(task.label_names))
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear((train_x - mean) / std), train_y) + 1e-3 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    trained = time.perf_counter() - start
    with torch.no_grad():
        test_x, test_y = features(task.splits[2])
        accuracy = (linear((test_x - mean) / std).argmax(-1) == test_y).float().mean().item()
    parameters = sum(p.numel() for p in linear.parameters())
    return Run(PROBE, None, parameters, model.base_parameter_count() + parameters, accuracy, trained,
               time.perf_counter() - start - trained, None, 0)


def compare_rows(runs: Sequence[Run]) -> list[tuple[str, ...]]:
    return [(run.adapter, f"{run.trainable:,}", f"{100 * run.trainable / run.total:.2f}", f"{run.test_accuracy:.4f}",
             f"{run.train_seconds:.1f}", f"{run.inference_seconds:.2f}",
             "-" if run.adapter_bytes is None else f"{run.adapter_bytes / 1024:.0f}",
             "-" if run.directory is None else str(run.directory)) for run in runs]


def write_tables(runs: Sequence[Run], out: Path) -> list[str]:
    """compare.md and compare.csv in ``out``, rewritten whole (an interruption keeps the methods done so far)."""
    rows = compare_rows(runs)
    table = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + " --- |" * len(COMPARE_COLUMNS)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(table) + "\n")
    with (out / "compare.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([COMPARE_COLUMNS, *rows])
    return table


def compare(args: argparse.Namespace) -> None:
    """Train several methods on the same data and tabulate them like AdapterHub's published comparison."""
    methods = args.methods or list(COMPARE_DEFAULT)
    directory = model_dir(args.model)
    model = load(directory, quiet=True)
    check_methods(methods, model)
    task = Task.from_args(args, model)
    names = adapter_names(methods)
    is_main = training.rank_and_world()[0] == 0
    out = Path(args.out)
    runs: list[Run] = []
    if is_main:
        print(task.describe(model))
        print(f"methods       {len(methods)}, each saved in {out}/NAME: "
              + ", ".join(f"{method} -> {name}" for method, name in zip(methods, names, strict=True)), flush=True)
        runs.append(linear_probe(task, args.seed))
        write_tables(runs, out)
        print(f"baseline      {PROBE}: test accuracy {runs[0].test_accuracy:.4f} ({runs[0].trainable:,} parameters)",
              flush=True)
    for index, (method, name) in enumerate(zip(methods, names, strict=True), start=1):
        def announce(model: PretrainedEncoder, trainable: int, total: int, index: int = index,
                     method: str = method) -> None:
            print(f"method {index}/{len(methods)}  {method}: {trainable:,} trainable parameters with its "
                  f"head ({100 * trainable / total:.2f}%)", flush=True)

        run = train_and_test(task, method, name, args, on_start=announce)
        if run is None:
            continue
        runs.append(run)
        write_tables(runs, out)
        print(f"method {index}/{len(methods)}  {method}: test accuracy {run.test_accuracy:.4f}, "
              f"{run.train_seconds:.1f} s, saved in {run.directory}", flush=True)
    if not is_main:
        return
    print("\n".join(write_tables(runs, out)))
    written = [out / "compare.md", out / "compare.csv"]
    if has_matplotlib():
        written.append(plot(runs, out / "compare.png", f"{task.model_name} on {task.data_name}"))
    print("wrote " + ", ".join(map(str, written)))
    if not has_matplotlib():
        print("chart         not drawn: it needs matplotlib (pip install matplotlib)")


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def chart(runs: Sequence[Run], title: str) -> Any:
    """Test accuracy against trainable parameters (log scale), a labelled point per method, and the linear probe's
    accuracy drawn across as the frozen model's baseline; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    span = max(0.02, max(run.test_accuracy for run in runs) - min(run.test_accuracy for run in runs))
    placed: list[tuple[float, float]] = []
    for run in sorted(runs, key=lambda run: run.trainable):
        x, y = run.trainable, run.test_accuracy
        if run.adapter == PROBE:
            axes.axhline(y, color="gray", linestyle="--", linewidth=1, label=f"{PROBE}: {y:.4f}")
            axes.scatter([x], [y], color="gray", marker="s")
        else:
            axes.scatter([x], [y], color="tab:blue")
        # labels of points close together are stacked downwards instead of printed over each other
        crowd = sum(abs(math.log10(x / px)) < 0.35 and abs(y - py) < 0.08 * span for px, py in placed)
        placed.append((x, y))
        axes.annotate(f"{run.adapter}: {y:.4f}", (x, y), textcoords="offset points", xytext=(7, 3 - 11 * crowd),
                      fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("trainable parameters, with the classification head (log scale)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"{title}: test accuracy against trainable parameters", fontsize=10)
    axes.margins(x=0.25, y=0.15)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def plot(runs: Sequence[Run], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    figure = chart(runs, title)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

