"""Texts as tokens for the training and prediction commands: unpadded examples, truncation counted, batches padded."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from peftcore import models
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.training import collate


def token_limit(model: PretrainedEncoder, tokenizer: models.Tokenizer) -> int:
    """The most tokens a sequence may have: the model's position table, or the tokenizer's stated limit if lower."""
    return min(getattr(model, "max_length", sys.maxsize), tokenizer.model_max_length or sys.maxsize)


@dataclass
class Encoded:
    """Texts as unpadded examples, and what truncation did to them."""

    examples: list[dict[str, Tensor]]
    limit: int  # tokens kept per text at most
    longest: int  # tokens of the longest text after truncation
    truncated: int  # texts cut to ``limit``

    def report(self, limit_source: str) -> str:
        if self.truncated:
            return (f"truncated     {self.truncated:,} of {len(self.examples):,} texts cut to {self.limit} tokens "
                    f"({limit_source}): their ends are not seen")
        return f"tokens        at most {self.longest} per text, none truncated ({limit_source}: {self.limit})"


def encode(tokenizer: models.Tokenizer, texts: Sequence[str], limit: int, chunk: int = 512) -> Encoded:
    """Each text's tokens (1-D tensors, at most ``limit``), counting the texts that had to be cut. A text is encoded
    with one token to spare first, so that only the texts that are too long are encoded twice."""
    examples, longest, truncated = [], 0, 0
    for start in range(0, len(texts), chunk):
        part = list(texts[start:start + chunk])
        batch = tokenizer(part, max_length=limit + 1)
        sizes = batch["attention_mask"].sum(1).tolist()
        cut = [i for i, size in enumerate(sizes) if size > limit]
        shorter = tokenizer([part[i] for i in cut], max_length=limit) if cut else {}
        rows = {i: row for row, i in enumerate(cut)}
        truncated += len(cut)
        for i, size in enumerate(sizes):
            source, row, size = (shorter, rows[i], limit) if i in rows else (batch, i, size)
            examples.append({key: t[row, :size] for key, t in source.items()})  # (T,) without the padding
            longest = max(longest, size)
    return Encoded(examples, limit, longest, truncated)


def padder(tokenizer: models.Tokenizer) -> Callable[[Sequence[dict[str, Tensor]]], dict[str, Tensor]]:
    return partial(collate, pad_values={"input_ids": tokenizer.pad_token_id})

