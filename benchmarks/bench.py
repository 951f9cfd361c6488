"""Speed and memory of peftcore against transformers, AdapterHub and PEFT on the same weights, in one process.

Repetitions of the contenders are interleaved (ours, theirs, ours, theirs, ...) so that machine noise hits all of
them alike; the table gives medians, inter-quartile spreads ("!" marks an IQR above 10% of the median: re-run
that row) and the ratio of each contender to the row's reference and to a second reference where there is one.

    python benchmarks/bench.py --shape small                          # everything but compile, quick
    python benchmarks/bench.py --shape base --threads 2 --only floor forward train   # roberta-base, batch 8 x 128
    python benchmarks/bench.py --shape small --only compile --compile # torch.compile (slow to compile)

Workloads (--only): floor (matmul rate, FLOP floor), forward (every architecture vs transformers), train (every
method vs AdapterHub, with HF frozen / head-only / full and our frozen step as references), inference (LoRA and IA3,
unmerged and merged, vs our plain forward), mixed (mixed-adapter batch vs a loop, once the model takes
adapter_names), memory (peak RSS of a train step, one fresh process per contender), checkpointing (train step
time and peak memory with and without gradient checkpointing), load (checkpoint conversion
and adapter load), varlen (lengths uniform in 16..128, padded), modernbert (ModernBERT's forward and LoRA train step
vs transformers and PEFT, full-length 512 and lengths uniform in 16..512), compile (needs --compile); kernels.py's:
dropout (bit mask against bernoulli_ in our frozen step), attention (each strategy over packed rows), unpad (unpadded
against padded over length distributions), frozen_varlen (our frozen step against transformers' on variable lengths),
breakdown (the frozen step's distance to the floor: linears alone, with GELU and LayerNorm, without dropout;
with --compile each also compiled),
compile_packed (eager packed against compiled packed and compiled padded, lengths 8..64, batch 32; needs --compile),
compile_steps (frozen and LoRA train steps eager against compiled, full length and variable length, beside the FLOP
floor; needs --compile).
On CUDA the run uses bf16 unless --dtype says otherwise, and memory is the allocator's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import harness, kernels, modernbert, peft_methods, workloads
from peftcore.allocator import retain_freed_memory

WORKLOADS = ("floor", "forward", "train", "peft_methods", "inference", "mixed", "memory", "checkpointing", "load",
             "varlen", "modernbert", "compile", "compile_packed", "compile_steps", "dropout", "attention", "unpad",
             "frozen_varlen", "breakdown")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=workloads.SHAPES, default="small")
    parser.add_argument("--repeats", type=int, default=8, help="timed rounds per row, after one warm-up round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, help="workloads to run (default: all but compile)")
    parser.add_argument("--methods", nargs="+", choices=workloads.METHODS, default=workloads.METHODS)
    parser.add_argument("--compile", action="store_true",
                        help="also run the torch.compile workloads, and compiled contenders in breakdown")
    parser.add_argument("--lengths", nargs="+", choices=workloads.LENGTHS, default=tuple(workloads.LENGTHS),
                        help="length distributions of the unpad workload")
    parser.add_argument("--varlen-batches", type=int, default=4, help="batches per variable-length repetition")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="before each timed round, wait up to this many seconds for other processes to leave "
                             "the CPU (0: never wait)")
    parser.add_argument("--busy", type=float, default=0.25,
                        help="a sample during which other processes used this many cores or more is not clean: it is "
                             "repeated (up to 2 x --repeats rounds); each row reports how clean its samples were")
    parser.add_argument("--retain-freed-memory", action="store_true",
                        help="keep freed memory for reuse, as peftcore's Trainer does on CPU (peftcore/allocator.py); "
                             "process-wide: every contender runs with it")
    parser.add_argument("--json", default="benchmarks/results.json", help="where to write every row as JSON")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: measure one contender's peak memory
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def machine(args: argparse.Namespace, dtype: torch.dtype) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"shape": args.shape, "threads": args.threads, "device": args.device, "dtype": str(dtype),
            "torch": torch.__version__, "cpu": cpu, "cores": os.cpu_count(), "repeats": args.repeats,
            "load_average_at_start": os.getloadavg(), "retain_freed_memory": args.retain_freed_memory}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(args.device)
    return info


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.retain_freed_memory:
        retain_freed_memory()
    torch.set_num_threads(args.threads)
    workloads.quiet()
    harness.SETTINGS.update(quiet_wait=args.quiet_wait, busy=args.busy)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else torch.bfloat16 if device.type == "cuda" else torch.float32
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="peftcore-bench-"))
    b = workloads.Bench(args.shape, device, dtype, args.repeats, root, args.threads, lengths=tuple(args.lengths))
    if args.memory_child:
        print(json.dumps(workloads.memory_child(b, args.memory_child, args.method)))
        return

    chosen = args.only or [w for w in WORKLOADS if not w.startswith("compile") or args.compile]
    if any(w.startswith("compile") for w in chosen) and not args.compile:
        raise SystemExit("the compile workload compiles for minutes; pass --compile to run it.")
    info = machine(args, dtype)
    print(", ".join(f"{key} {value}" for key, value in info.items()), flush=True)
    harness.print_header()
    child = ["--shape", args.shape, "--threads", str(args.threads), "--device", args.device,
             "--dtype", next(name for name, value in DTYPES.items() if value == dtype)]
    if args.retain_freed_memory:
        child.append("--retain-freed-memory")
    methods = tuple(args.methods)
    try:
        run_workloads(args, b, chosen, methods, child, info)
    finally:
        if not args.root:  # the checkpoints are ours: a base-shape run writes about 2 GB of them
            shutil.rmtree(root, ignore_errors=True)


def run_workloads(args: argparse.Namespace, b: workloads.Bench, chosen: list[str], methods: tuple[str, ...],
                  child: list[str], info: dict) -> None:
    start = time.perf_counter()
    run = {
        "floor": lambda: workloads.floor(b),
        "forward": lambda: workloads.plain_forward(b),
        "train": lambda: workloads.train(b, methods),
        "peft_methods": lambda: peft_methods.run(b),
        "inference": lambda: workloads.inference(b),
        "mixed": lambda: workloads.mixed(b),
        "memory": lambda: workloads.memory(b, methods, child),
        "checkpointing": lambda: workloads.checkpointing(b, methods, child),
        "load": lambda: workloads.loading(b),
        "varlen": lambda: workloads.varlen(b, methods, args.varlen_batches),
        "modernbert": lambda: modernbert.run(b, args.varlen_batches),
        "compile": lambda: workloads.compiled(b),
        "compile_packed": lambda: kernels.compiled_packed(b, args.varlen_batches),
        "compile_steps": lambda: kernels.compiled_steps(b, args.varlen_batches),
        "dropout": lambda: kernels.dropout_step(b),
        "attention": lambda: kernels.attention_strategies(b),
        "unpad": lambda: kernels.unpadded_against_padded(b, args.varlen_batches),
        "frozen_varlen": lambda: kernels.frozen_varlen(b, args.varlen_batches),
        "breakdown": lambda: kernels.breakdown(b, args.compile),
    }
    for workload in WORKLOADS:
        if workload in chosen:
            run[workload]()
    info.update(load_average_at_end=os.getloadavg(), wall_s=round(time.perf_counter() - start, 1))
    print(f"done in {info['wall_s']} s; load average at end {info['load_average_at_end']}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**info, "floor": b.floor, "rows": b.rows}, indent=1))


if __name__ == "__main__":
    main()
