"""Speed of peftcore against transformers, AdapterHub and PEFT on the same weights, in one process.

Repetitions of the contenders are interleaved (ours, theirs, ours, theirs, ...) so that machine noise hits all of
them alike; the table gives medians, inter-quartile spreads and the ratio of each to its reference.

    python benchmarks/bench.py --shape small            # a quick run
    python benchmarks/bench.py --shape base --threads 2 # roberta-base, batch 8 x 128 (docs/performance.md)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import adapters
import peft
import torch
import transformers as tf

from models import RobertaModel

SHAPES = {
    "small": dict(config=dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                              vocab_size=1000), batch=8, length=64),
    "base": dict(config=dict(), batch=8, length=128),  # roberta-base
}
METHODS = ("lora", "ia3", "seq_bn", "prefix_tuning", "mam", "unipelt")


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleave(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each contender once for warm-up, then ``repeats`` rounds running every contender once per round."""
    for step in contenders.values():
        step()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, step in contenders.items():
            times[name].append(timed(step))
    return times


def summary(samples: list[float]) -> dict[str, float]:
    quartiles = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return {"median": statistics.median(samples), "iqr": quartiles[2] - quartiles[0]}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, pick=lambda out: out) -> Callable:
    def step() -> None:
        out = model(**batch)
        pick(out).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def forward(model: torch.nn.Module, batch: dict) -> Callable:
    def step() -> None:
        with torch.no_grad():
            model(**batch)
    return step


def run(shape: str, repeats: int) -> list[dict]:
    spec = SHAPES[shape]
    config = tf.RobertaConfig(**spec["config"])
    directory = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    tf.RobertaModel(config).save_pretrained(directory)
    ids = torch.randint(5, config.vocab_size, (spec["batch"], spec["length"]))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rows = []

    hf = tf.RobertaModel.from_pretrained(directory).eval()
    ours = RobertaModel.from_pretrained(directory).eval()
    times = interleave({"ours": forward(ours, batch), "transformers": forward(hf, batch)}, repeats)
    rows.append(row("forward (plain)", times, "transformers"))

    for method in METHODS:
        ours = RobertaModel.from_pretrained(directory)
        ours.add_adapter("a", method)
        ours.train_adapter("a")
        hub = tf.RobertaModel.from_pretrained(directory)
        adapters.init(hub)
        hub.add_adapter("a", config=method)
        hub.train_adapter("a")
        frozen = tf.RobertaModel.from_pretrained(directory).train()
        frozen.requires_grad_(False)
        frozen.pooler.requires_grad_(True)
        contenders = {
            "ours": train_step(ours, adam(ours), batch, lambda out: out.last_hidden_state),
            "adapterhub": train_step(hub, adam(hub), batch, lambda out: out.last_hidden_state),
            "transformers-frozen": train_step(frozen, adam(frozen), batch, lambda out: out.pooler_output),
        }
        if method == "lora":
            target = peft.get_peft_model(tf.RobertaModel.from_pretrained(directory),
                                         peft.LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"]))
            contenders["peft"] = train_step(target, adam(target), batch, lambda out: out.last_hidden_state)
        times = interleave(contenders, repeats)
        rows.append(row(f"train step {method}", times, "adapterhub"))

    ours = RobertaModel.from_pretrained(directory).eval()
    plain = forward(ours, batch)
    lora = RobertaModel.from_pretrained(directory).eval()
    lora.add_adapter("a", "lora", set_active=True)
    merged = RobertaModel.from_pretrained(directory).eval()
    merged.add_adapter("a", "lora", set_active=True)
    merged.merge_adapter("a")
    times = interleave({"plain": plain, "lora unmerged": forward(lora, batch), "lora merged": forward(merged, batch)},
                       repeats)
    rows.append(row("inference with LoRA", times, "plain"))
    return rows


def adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def row(workload: str, times: dict[str, list[float]], reference: str) -> dict:
    stats = {name: summary(samples) for name, samples in times.items()}
    base = stats[reference]["median"]
    return {"workload": workload, "reference": reference, "stats": stats,
            "ratios": {name: stat["median"] / base for name, stat in stats.items()}}


def print_table(rows: list[dict]) -> None:
    print(f"{'workload':<28}{'contender':<22}{'median s':>10}{'IQR s':>9}{'ratio':>8}")
    for entry in rows:
        for name, stat in entry["stats"].items():
            mark = " (ref)" if name == entry["reference"] else ""
            print(f"{entry['workload']:<28}{name + mark:<22}{stat['median']:>10.4f}{stat['iqr']:>9.4f}"
                  f"{entry['ratios'][name]:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default="benchmarks/results.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = run(args.shape, args.repeats)
    print(f"shape {args.shape}, {args.threads} threads, torch {torch.__version__}, medians of {args.repeats}")
    print_table(rows)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"shape": args.shape, "threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
