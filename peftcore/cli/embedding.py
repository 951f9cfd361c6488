"""``peftcore finetune --task embedding``: train an adapter for sentence embeddings on text pairs (in-batch negatives,
cosine-similarity regression or triplets), and report held-out retrieval against the frozen checkpoint."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from torch import nn

from peftcore import data, embeddings, models, training
from peftcore.cli.checkpoints import MINILM, load, model_dir
from peftcore.cli.finetune import adapter_names, check_sizes
from peftcore.cli.texts import encode, token_limit

DOCSTRINGS = ("first sentences of the docstrings of numpy's and torch's public functions, each paired with the "
              "function's name")


def retrieval(model: nn.Module, tokenizer: models.Tokenizer, pairs: Sequence[data.Pair], limit: int) -> dict:
    """MRR@10 and accuracy@1 of finding each pair's positive among all the positives of ``pairs`` by its anchor."""
    queries = embeddings.encode_texts(model, tokenizer, [pair[0] for pair in pairs], max_length=limit)
    documents = embeddings.encode_texts(model, tokenizer, [pair[1] for pair in pairs], max_length=limit)
    return embeddings.retrieval_metrics(queries, documents)


def describe(name: str, metrics: dict[str, float]) -> str:
    return f"{name:<13} " + "  ".join(f"{metric} {value:.4f}" for metric, value in metrics.items())


def finetune_embedding(args: argparse.Namespace) -> None:
    """Train ``args.adapter`` with a sentence_embedding head on pairs, compare held-out retrieval with the frozen
    model's, save the adapter (with its head) and say how to export it."""
    start = time.perf_counter()
    directory = model_dir(args.model)
    model = load(directory, quiet=True)
    tokenizer = models.Tokenizer.from_pretrained(directory)
    st = embeddings.read_sentence_transformers(directory) or embeddings.SentenceTransformersConfig()
    limit = min(args.max_length or st.max_seq_length or token_limit(model, tokenizer), token_limit(model, tokenizer))
    pairs = data.load_pairs(args.data) if args.data else data.docstring_pairs()
    kind = args.loss or ("cosine_similarity" if all(pair[3] is not None for pair in pairs) else
                         "multiple_negatives_ranking")
    loss = embeddings.EmbeddingLoss(kind)
    splits = data.split(pairs, args.seed)
    check_sizes(splits, args.batch_size, training.rank_and_world()[1])
    has_negatives = all(pair[2] is not None for pair in pairs)
    parts = ("anchor", "positive", "negative") if has_negatives else ("anchor", "positive")
    encoded = {part: encode(tokenizer, [pair[i] for pair in splits[0]], limit).examples for i, part in
               enumerate(parts)}
    train_data = embeddings.pair_examples(encoded, [pair[3] for pair in splits[0]] if kind == "cosine_similarity"
                                          else None)
    name = adapter_names([args.adapter])[0]
    print(f"model         {MINILM if args.model is None else Path(directory).resolve().name}: pooling "
          f"{st.pooling_mode}{', normalised' if st.normalize else ''}, at most {limit} tokens per text")
    train, validation, test = (len(part) for part in splits)
    print(f"data          {args.data or DOCSTRINGS}: {len(pairs):,} pairs, {train:,} train / {validation:,} "
          f"validation / {test:,} test; loss {kind}")
    model.add_embedding_head(name, **st.head_fields)
    model.eval()
    print(describe("frozen model", retrieval(model, tokenizer, splits[2], limit)) + "  (test split)", flush=True)
    model.add_adapter(name, args.adapter)
    pad = partial(training.collate, pad_values={f"{part}_input_ids": tokenizer.pad_token_id for part in parts})
    config = training.TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                     seed=args.seed, bf16=args.bf16, adapter_drop=args.adapter_drop,
                                     checkpoint_dir=str(Path(args.checkpoint_dir) / name) if args.checkpoint_dir
                                     else None)
    trainer = training.Trainer(model, name, config, train_data, collate_fn=pad, loss_fn=loss,
                               evaluate=lambda m: {f"validation {k}": v for k, v in
                                                   retrieval(m, tokenizer, splits[1], limit).items()})
    result = trainer.fit()
    if training.rank_and_world()[0] != 0:
        return
    print(describe("adapter", retrieval(model, tokenizer, splits[2], limit)) + "  (test split)")
    out = Path(args.out) / name
    model.save_adapter(out, name)
    print(f"train time    {result.seconds:.1f} s ({result.steps} steps of {args.batch_size})")
    print(f"adapter       {sum(f.stat().st_size for f in out.iterdir()) / 1024:.0f} KiB in {out} (with its "
          "sentence_embedding head); peftcore.embeddings.save_sentence_transformers writes a merged model as a "
          "sentence-transformers directory")
    print(f"total time    {time.perf_counter() - start:.1f} s")

