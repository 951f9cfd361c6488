"""``peftcore merge BASE ADAPTER OUT``: a checkpoint with an adapter folded into its weights, which transformers
loads as a plain model with the adapter's outputs (``merge_and_unload``, then ``save_pretrained(format="hf")``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from peftcore.cli import checkpoints


def merge(args: argparse.Namespace) -> None:
    destination = Path(args.out)
    checkpoints.check_destination(destination, args.overwrite)
    start = time.perf_counter()
    model = checkpoints.load(args.base)
    name = model.load_adapter(args.adapter, with_head=False, set_active=True)
    model.merge_and_unload()  # refuses an adapter that no weight can hold, naming why
    checkpoints.write(model, args.base, destination, "hf")
    print(f"merged adapter {name!r} ({args.adapter}) into {args.base} in {time.perf_counter() - start:.1f} s")
