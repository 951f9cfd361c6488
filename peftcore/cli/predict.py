"""``peftcore predict``: texts labelled by a trained adapter and its classification head, with probabilities."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import torch

from peftcore import data, models
from peftcore.cli.checkpoints import load, model_dir
from peftcore.cli.texts import encode, padder, token_limit


def predict(args: argparse.Namespace) -> None:
    """Label texts with a trained adapter and its classification head."""
    directory = model_dir(args.model)
    if args.texts and args.file:
        raise ValueError("give texts on the command line or --file, not both.")
    if args.texts:
        texts = list(args.texts)
    elif args.file and args.file != "-":
        texts = data.read_texts(args.file)
    elif args.file == "-" or not sys.stdin.isatty():
        texts = data.read_texts(lines=sys.stdin)
    else:
        raise ValueError("no texts: give them on the command line, as --file FILE (.csv/.jsonl with a text column, "
                         "or .txt with one a line), or one a line on standard input.")
    if not texts:
        raise ValueError("no texts to predict (the input is empty).")
    model = load(directory, quiet=True).eval()
    name = model.load_adapter(args.adapter, set_active=True)
    if name not in model.heads:
        raise ValueError(f"{args.adapter} has no head (head_config.json beside the adapter); predict needs the "
                         "classification head the adapter was trained with.")
    head = model.heads[name].config
    if head["head_type"] not in ("classification", "multilabel_classification") or head["num_labels"] < 2:
        raise ValueError(f"{args.adapter} has a {head['head_type']} head with {head['num_labels']} labels; predict "
                         "labels texts with classification heads of 2 or more labels.")
    names = model.get_labels(name) if head.get("label2id") else [str(i) for i in range(head["num_labels"])]
    tokenizer = models.Tokenizer.from_pretrained(directory)
    limit = token_limit(model, tokenizer)
    encoded = encode(tokenizer, texts, min(args.max_length or limit, limit))
    if encoded.truncated:
        print(f"peftcore predict: {encoded.truncated} of {len(texts)} texts cut to {encoded.limit} tokens",
              file=sys.stderr)
    pad = padder(tokenizer)
    multilabel = head["head_type"] == "multilabel_classification"
    write = writer(args.format, names, sys.stdout)
    with torch.inference_mode():
        for first in range(0, len(texts), args.batch_size):
            batch = pad(encoded.examples[first:first + args.batch_size])  # with its attention mask: runs unpadded
            logits = model(**batch).logits.float()
            probabilities = logits.sigmoid() if multilabel else logits.softmax(-1)
            for text, row in zip(texts[first:first + args.batch_size], probabilities.tolist(), strict=True):
                chosen = [i for i, p in enumerate(row) if p > 0.5] if multilabel else [max(range(len(row)),
                                                                                          key=row.__getitem__)]
                write(text, [names[i] for i in chosen], [row[i] for i in chosen], dict(zip(names, row, strict=True)))


def writer(form: str, names: Sequence[str], stream: TextIO) -> Callable[..., None]:
    """One output line per text: ``text`` (label, probability, text), ``jsonl`` or ``csv`` (every probability)."""
    if form == "csv":
        table = csv.writer(stream)
        table.writerow(["text", "label", "probability", *(f"p({name})" for name in names)])
        return lambda text, labels, chosen, everything: table.writerow(
            [text, "|".join(labels), "|".join(f"{p:.4f}" for p in chosen),
             *(f"{everything[name]:.4f}" for name in names)])
    if form == "jsonl":
        return lambda text, labels, chosen, everything: print(json.dumps(
            {"text": text, "label": labels[0] if len(labels) == 1 else labels,
             "probability": round(chosen[0], 6) if len(chosen) == 1 else [round(p, 6) for p in chosen],
             "probabilities": {name: round(p, 6) for name, p in everything.items()}}), file=stream)
    width = max(map(len, names))
    return lambda text, labels, chosen, everything: print(
        f"{'|'.join(labels) or '(none)':<{width}}  {'|'.join(f'{p:.4f}' for p in chosen) or '-':>6}  {text}",
        file=stream)

