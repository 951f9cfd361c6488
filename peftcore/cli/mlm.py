"""``peftcore finetune --task mlm``: train a language adapter (MAD-X's first step; default: the invertible
``seq_bn_inv``) with a masked-LM head on plain text, beside the same head trained alone on the frozen model, and report
both held-out masked-LM losses on the same masks."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from peftcore import data, models, training
from peftcore.cli.checkpoints import MINILM, load, model_dir
from peftcore.cli.finetune import adapter_names, check_sizes
from peftcore.cli.texts import encode, token_limit
from peftcore.masking import MaskingCollator, continuation_ids
from peftcore.sites import MaskedLMHead

DOCSTRINGS = "prose paragraphs of the docstrings of numpy's and torch's public functions"
MASK_TOKENS = ("[MASK]", "<mask>")  # BERT's, RoBERTa's


def collator(tokenizer: models.Tokenizer, vocab_size: int, whole_word: bool,
             generator: torch.Generator | None = None) -> MaskingCollator:
    """BERT's masking for ``tokenizer``'s ids: its mask token, its special tokens never chosen."""
    mask = next((i for token in MASK_TOKENS if (i := tokenizer.backend.token_to_id(token)) is not None), None)
    if mask is None:
        raise ValueError(f"the tokenizer has none of the mask tokens {list(MASK_TOKENS)}; masked-LM training needs "
                         "one.")
    special = [i for i, token in tokenizer.backend.get_added_tokens_decoder().items() if token.special]
    vocab = tokenizer.backend.get_vocab()
    return MaskingCollator(mask, tokenizer.pad_token_id, vocab_size, special_ids=special, whole_word=whole_word,
                           continuations=continuation_ids(vocab) if whole_word else (), generator=generator)


def masked_lm_loss(model: nn.Module, head: str, batches: Sequence[dict]) -> float:
    """The mean cross-entropy over every masked token of ``batches`` (masked once, so every model sees the same)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            tokens = int((batch["labels"] != -100).sum())
            total += model.heads[head].loss(model(**inputs).logits, batch["labels"]).item() * tokens
            count += tokens
    return total / max(1, count)


def train(model: nn.Module, name: str, args: argparse.Namespace, train_data: list, masking: MaskingCollator,
          validation: Sequence[dict]) -> training.TrainResult:
    config = training.TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                     seed=args.seed, bf16=args.bf16)
    return training.Trainer(model, name, config, train_data, collate_fn=masking,
                            evaluate=lambda m: {"validation masked-LM loss": masked_lm_loss(m, name, validation)}
                            ).fit()


def finetune_mlm(args: argparse.Namespace) -> None:
    """Train ``args.adapter`` and a masked-LM head on text; compare with the head alone; save the adapter."""
    start = time.perf_counter()
    directory = model_dir(args.model)
    model = load(directory, quiet=True)
    tokenizer = models.Tokenizer.from_pretrained(directory)
    limit = args.max_length or min(128, token_limit(model, tokenizer))
    texts = data.read_texts(args.data) if args.data else data.docstring_paragraphs()
    splits = data.split(texts, args.seed)
    check_sizes(splits, args.batch_size, training.rank_and_world()[1])
    train_data, validation, test = (encode(tokenizer, part, limit).examples for part in splits)
    masking = collator(tokenizer, model.config.vocab_size, args.whole_word)
    fixed = collator(tokenizer, model.config.vocab_size, args.whole_word, torch.Generator().manual_seed(args.seed))
    held_out = [[fixed(part[i:i + 64]) for i in range(0, len(part), 64)] for part in (validation, test)]
    name = adapter_names([args.adapter])[0]
    origin = ("started from the checkpoint's LM head" if isinstance(model.head, MaskedLMHead) else
              "new dense and norm layers, its decoder tied to the word embeddings (the checkpoint has no LM head)")
    print(f"model         {MINILM if args.model is None else Path(directory).resolve().name}; masked-LM head: "
          f"{origin}")
    print(f"data          {args.data or DOCSTRINGS}: {len(texts):,} texts, {len(train_data):,} train / "
          f"{len(validation):,} validation / {len(test):,} test, at most {limit} tokens each; masking "
          f"{'whole words' if args.whole_word else 'tokens'} (15%, 80/10/10)", flush=True)
    model.add_masked_lm_head("mlm_head_only")
    train(model, "mlm_head_only", args, train_data, masking, held_out[0])
    alone = masked_lm_loss(model, "mlm_head_only", held_out[1])
    model = load(directory, quiet=True)
    model.add_adapter(name, args.adapter)
    model.add_masked_lm_head(name)
    result = train(model, name, args, train_data, masking, held_out[0])
    adapted = masked_lm_loss(model, name, held_out[1])
    for what, loss in (("head alone", alone), (f"{args.adapter} + head", adapted)):
        print(f"test loss     {loss:.4f} (perplexity {math.exp(loss):.1f})  {what}")
    out = Path(args.out) / name
    model.save_adapter(out, name)
    print(f"train time    {result.seconds:.1f} s ({result.steps} steps of {args.batch_size}) for the adapter")
    print(f"adapter       {sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KiB in {out} (with its head); "
          f"stack a task adapter on it: peftcore finetune --language-adapter {out}")
    print(f"total time    {time.perf_counter() - start:.1f} s")
