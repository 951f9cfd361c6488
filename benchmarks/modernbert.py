"""The ``modernbert`` workload of ``bench.py``: ModernBERT's forward and LoRA train step, ours against transformers'
ModernBertModel (its default attention: SDPA over the padded batch on CPU and on GPUs without flash-attn) and PEFT's
LoRA on it, on full-length batches and on batches whose lengths are uniform in 16..512.

The model is ModernBERT's architecture at the bench shape's width (``SHAPES[shape]``: ``small`` is hidden 256,
4 layers, 4 heads; ``base`` is ModernBERT-base's 768, 22 layers, 12 heads, intermediate 1152) with ModernBERT's
own attention pattern: a global layer every third, the others local over 128 tokens, rotary positions.
LoRA is r=8, alpha=8 on q, k and v: PEFT's on the fused ``Wqkv`` (one A shared by the three), ours a LoRA per
projection, which PEFT's file becomes on load (models/modernbert.py); each trains a 2-label head beside it.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
import transformers as tf
from torch import nn

from benchmarks.workloads import Bench, forward, train_step
from peftcore import models

LENGTH = 512  # the full-length batches' length, and the longest a variable-length batch may have
VARLEN = (16, LENGTH)
SHAPES = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384,
                  vocab_size=1000),
    "base": dict(vocab_size=50368),  # ModernBERT-base: transformers' ModernBertConfig defaults
}


def checkpoint(b: Bench) -> Path:
    """A random-init transformers ModernBertModel at the bench's shape, written once."""
    directory = b.root / "modernbert"
    if not (directory / "config.json").exists():
        torch.manual_seed(0)
        config = tf.ModernBertConfig(**SHAPES[b.shape], pad_token_id=0, max_position_embeddings=LENGTH)
        tf.ModernBertModel(config).save_pretrained(directory)
    return directory


def batch(b: Bench, lengths: list[int], seed: int) -> dict:
    """Token ids of ``lengths``, right-padded to the longest, and their mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, SHAPES[b.shape]["vocab_size"], (len(lengths), max(lengths)), generator=generator)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 0).to(b.device), "attention_mask": mask.to(b.device)}


def batches(b: Bench, count: int) -> dict[str, list[dict]]:
    """``count`` full-length batches and ``count`` batches of lengths uniform in VARLEN, ``b``'s batch size each."""
    rows = b.spec["batch"]
    generator = torch.Generator().manual_seed(1)
    varlen = [torch.randint(VARLEN[0], VARLEN[1] + 1, (rows,), generator=generator).tolist() for _ in range(count)]
    return {"fixed": [batch(b, [LENGTH] * rows, seed) for seed in range(count)],
            "varlen": [batch(b, lengths, seed) for seed, lengths in enumerate(varlen)]}


def trainee(b: Bench, contender: str) -> nn.Module:
    """A ModernBERT classifier in train mode with LoRA r=8 on q, k and v trainable, and its head."""
    directory = checkpoint(b)
    with contextlib.redirect_stderr(io.StringIO()):
        if contender == "ours":
            model = models.from_pretrained(directory)
            model.add_adapter("a", "lora[r=8, alpha=8, attn_matrices=['q', 'k', 'v']]")
            model.add_classification_head("a", num_labels=2)
            model.train_adapter("a")
        else:
            import peft

            model = peft.get_peft_model(
                tf.ModernBertForSequenceClassification.from_pretrained(directory, num_labels=2),
                peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["Wqkv"]))
    return b.place(model).train()


def run(b: Bench, count: int) -> None:
    """Forward (ours unpadded, ours padded, transformers) and LoRA train step (ours, PEFT) on each kind of batch."""
    directory = checkpoint(b)
    ours = b.place(models.from_pretrained(directory)).eval()
    padded = b.place(models.from_pretrained(directory)).eval()
    padded.unpad = False
    theirs = b.place(tf.ModernBertModel.from_pretrained(directory)).eval()
    for kind, data in batches(b, count).items():
        real = sum(int(x["attention_mask"].sum()) for x in data)
        notes = {"batches": count, "real_token_fraction": round(real / sum(x["attention_mask"].numel() for x in data),
                                                                 3),
                 "shape": {**SHAPES[b.shape], "batch": b.spec["batch"], "lengths": VARLEN if kind == "varlen"
                           else LENGTH}}
        times = b.measure({"ours": forward(ours, data), "ours padded": forward(padded, data),
                           "transformers": forward(theirs, data)})
        b.add(f"modernbert forward {kind}", times, "transformers", "ours padded", **notes)
        steps = {name: train_step(b, trainee(b, name), data) for name in ("ours", "peft")}
        b.add(f"modernbert lora train step {kind}", b.measure(steps), "peft", **notes)
