"""``peftcore export-onnx``: a checkpoint, with adapters loaded (merged into the weights, or active), as an ONNX file
(peftcore.export)."""

from __future__ import annotations

import argparse
from pathlib import Path

from peftcore import Stack, models
from peftcore.export import export_onnx


def export(args: argparse.Namespace) -> None:
    """Load the model and its adapters, merge them if asked, and write the ONNX file."""
    model = models.from_pretrained(args.model)
    names = [model.load_adapter(directory) for directory in args.adapter or ()]
    if args.merge and not names:
        raise ValueError("--merge folds the adapters of --adapter into the weights; name at least one.")
    if args.merge:
        for name in names:
            model.merge_adapter(name)
    elif names:
        model.set_active_adapters(Stack(*names))
    heads = [name for name in names if name in model.heads]
    if heads:
        model.active_head = heads[-1]
    outputs = export_onnx(model, args.output, token_type_ids=args.token_type_ids)
    size = Path(args.output).stat().st_size / 2**20
    adapters = f" with {', '.join(names)} {'merged' if args.merge else 'active'}" if names else ""
    print(f"wrote {args.output} ({size:.1f} MiB): {model.config.model_type}{adapters}; inputs input_ids, "
          f"attention_mask{', token_type_ids' if args.token_type_ids else ''} (batch x sequence, padded); outputs "
          f"{', '.join(outputs)}")
