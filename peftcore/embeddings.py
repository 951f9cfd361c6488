"""Sentence embeddings: pooling as a head (``sentence_embedding``), sentence-transformers' directories read and
written, and its three classic training losses, each equal to its class in sentence-transformers 5.x on the same
embeddings (tests/peftcore/test_embeddings.py).

A sentence-transformers directory is a transformers checkpoint plus ``modules.json`` listing its modules: the
encoder, ``1_Pooling`` (``config.json``: which pooling) and, for normalised embeddings, ``2_Normalize`` (no files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore import io
from peftcore.head_types import AdapterHead

POOLING_MODES = ("mean", "cls", "max", "lasttoken")
ST_TYPES = {  # sentence-transformers' module types (both the legacy and the 5.x import paths) -> our role
    f"sentence_transformers.{package}.{kind}": kind
    for package in ("models", "sentence_transformer.modules", "base.modules") for kind in ("Transformer", "Pooling",
                                                                                          "Normalize")}
LEGACY_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "lasttoken"}
UNSUPPORTED_POOLING = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


def pool(hidden: Tensor, attention_mask: Tensor | None, mode: str) -> Tensor:
    """One vector per sequence from the hidden states (B, T, C) of its real tokens (``attention_mask`` 1; None: all):
    their mean, the first one's (``cls``), the per-feature maximum, or the last one's (``lasttoken``) -> (B, C)."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(1).values
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":  # the first real token: position 0 unless the batch is padded on the left
        return hidden[rows, attention_mask.int().argmax(1)]
    if mode == "lasttoken":
        last = hidden.shape[1] - 1 - attention_mask.flip(1).int().argmax(1)  # the last real token, either padding side
        return hidden[rows, last]
    raise ValueError(f"pooling mode {mode!r} is not known; use one of {list(POOLING_MODES)}.")


class EmbeddingHead(AdapterHead, nn.Module):
    """A ``sentence_embedding`` head: ``logits`` are the pooled hidden states (B, C), L2-normalised with
    ``normalize``, as sentence-transformers' Pooling (and Normalize) modules compute them. It has no parameters; the
    adapter learns the embedding. It reads the forward's ``attention_mask`` (which the encoder reads too)."""

    encoder_input_names = ("attention_mask",)

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        if config.get("pooling_mode") not in POOLING_MODES:
            raise ValueError(f"a sentence_embedding head pools by one of {list(POOLING_MODES)}, got "
                             f"pooling_mode={config.get('pooling_mode')!r}.")
        self.config = dict(config)

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        pooled = pool(x, attention_mask, self.config["pooling_mode"])  # (B, C)
        return F.normalize(pooled, dim=-1) if self.config.get("normalize") else pooled

    def predict(self, out: Any, inputs: Mapping[str, Tensor]) -> None:
        out.logits = self(out.last_hidden_state, inputs.get("attention_mask"))

    def loss(self, logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        raise ValueError("a sentence_embedding head's loss compares the embeddings of several texts; train it with "
                         "peftcore.embeddings.EmbeddingLoss (Trainer(..., loss_fn=EmbeddingLoss(...))).")


# ---- losses: sentence-transformers' MultipleNegativesRankingLoss, CosineSimilarityLoss, TripletLoss ---------------


def multiple_negatives_ranking_loss(anchor: Tensor, positive: Tensor, negative: Tensor | None = None,
                                    scale: float = 20.0) -> Tensor:
    """In-batch negatives (van den Oord et al.'s InfoNCE; sentence-transformers' MultipleNegativesRankingLoss): each
    anchor (B, C) should be closer in cosine to its own positive than to every other positive and every (hard)
    ``negative`` (B, C); cross-entropy over the similarities times ``scale``."""
    candidates = positive if negative is None else torch.cat((positive, negative))  # (B or 2B, C)
    scores = F.normalize(anchor, dim=-1) @ F.normalize(candidates, dim=-1).T * scale  # (B, B or 2B)
    return F.cross_entropy(scores, torch.arange(len(anchor), device=anchor.device))


def cosine_similarity_loss(first: Tensor, second: Tensor, scores: Tensor) -> Tensor:
    """Regression of each pair's cosine similarity onto its gold ``scores`` (B,): mean squared error
    (sentence-transformers' CosineSimilarityLoss)."""
    return F.mse_loss(torch.cosine_similarity(first, second), scores.float().view(-1))


def triplet_loss(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 5.0) -> Tensor:
    """max(||a - p|| - ||a - n|| + margin, 0), averaged, with Euclidean distances (sentence-transformers' TripletLoss
    and its default margin 5)."""
    to_positive, to_negative = ((anchor - other).pow(2).sum(-1).sqrt() for other in (positive, negative))  # (B,)
    return F.relu(to_positive - to_negative + margin).mean()


LOSSES = ("multiple_negatives_ranking", "cosine_similarity", "triplet")
PARTS = {"multiple_negatives_ranking": ("anchor", "positive"), "cosine_similarity": ("anchor", "positive"),
         "triplet": ("anchor", "positive", "negative")}  # the texts of an example each loss needs


@dataclass(frozen=True)
class EmbeddingLoss:
    """A Trainer ``loss_fn`` for an embedding head: embeds the texts of each example — the batch holds
    ``anchor_input_ids``, ``anchor_attention_mask``, ``positive_...`` and optionally ``negative_...`` (``pair_examples``
    makes them) — with the model's active ``sentence_embedding`` head and applies loss ``kind`` (one of ``LOSSES``);
    cosine similarity regresses onto the batch's ``labels``. ``scale`` and ``margin`` as the losses take them."""

    kind: str = "multiple_negatives_ranking"
    scale: float = 20.0
    margin: float = 5.0

    def __post_init__(self) -> None:
        if self.kind not in LOSSES:
            raise ValueError(f"embedding loss {self.kind!r} is not known; use one of {list(LOSSES)}.")

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        parts = [part for part in ("anchor", "positive", "negative") if f"{part}_input_ids" in batch]
        lacking = [part for part in PARTS[self.kind] if part not in parts]
        if lacking:
            raise ValueError(f"the {self.kind} loss needs {' and '.join(PARTS[self.kind])} texts; the batch has no "
                             f"{' or '.join(lacking)} (give the data a {lacking[0]} column).")
        embedded = dict(zip(parts, embed_parts(model, batch, parts), strict=True))
        anchor, positive, negative = embedded["anchor"], embedded["positive"], embedded.get("negative")
        if self.kind == "multiple_negatives_ranking":
            return multiple_negatives_ranking_loss(anchor, positive, negative, self.scale)
        if self.kind == "cosine_similarity":
            if "labels" not in batch:
                raise ValueError("the cosine_similarity loss regresses onto a score per pair; give the data a score "
                                 "column.")
            return cosine_similarity_loss(anchor, positive, batch["labels"])
        return triplet_loss(anchor, positive, negative, self.margin)


def embed_parts(model: nn.Module, batch: Mapping[str, Tensor], parts: Sequence[str]) -> list[Tensor]:
    """The embeddings (B, C) of each part's texts (``{part}_input_ids``, ...): one forward per part."""
    return [model(**{key.removeprefix(f"{part}_"): value for key, value in batch.items()
                     if key.startswith(f"{part}_")}).logits.float() for part in parts]


def pair_examples(encoded: Mapping[str, Sequence[Mapping[str, Tensor]]],
                  scores: Sequence[float] | None = None) -> list[dict[str, Tensor]]:
    """Examples for ``EmbeddingLoss`` from each part's tokenized texts (``{"anchor": [example, ...], ...}``, the
    examples as ``peftcore.cli.texts.encode`` makes them), with each pair's score as ``labels`` if given."""
    count = {len(examples) for examples in encoded.values()}
    if len(count) != 1:
        raise ValueError(f"every part needs one text per example; got {({k: len(v) for k, v in encoded.items()})}.")
    examples = [{f"{part}_{key}": tensor for part, rows in encoded.items() for key, tensor in rows[i].items()}
                for i in range(count.pop())]
    if scores is not None:
        for example, score in zip(examples, scores, strict=True):
            example["labels"] = torch.tensor(float(score))
    return examples


def retrieval_metrics(queries: Tensor, documents: Tensor, k: int = 10) -> dict[str, float]:
    """Query i's right document is document i, among all of ``documents`` (N, C), ranked by cosine similarity:
    the mean reciprocal rank of the right one within the top ``k`` (0 below) and the share ranked first."""
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(documents.float(), dim=-1).T  # (N, N)
    right = scores.diagonal().unsqueeze(1)
    rank = (scores > right).sum(1) + 1  # ties count in the query's favour
    reciprocal = torch.where(rank <= k, 1.0 / rank.float(), torch.zeros_like(rank, dtype=torch.float))
    return {f"mrr@{k}": reciprocal.mean().item(), "accuracy@1": (rank == 1).float().mean().item()}


# ---- sentence-transformers directories -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceTransformersConfig:
    """What a sentence-transformers directory says beyond its checkpoint: the pooling, whether the embeddings are
    normalised, and the most tokens its encoder reads (None: the tokenizer's limit)."""

    pooling_mode: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None

    @property
    def head_fields(self) -> dict[str, Any]:
        """``add_embedding_head``'s arguments."""
        return {"pooling_mode": self.pooling_mode, "normalize": self.normalize}


def read_sentence_transformers(directory: str | os.PathLike) -> SentenceTransformersConfig | None:
    """The pooling, normalisation and length of the sentence-transformers directory ``directory``; None where it has
    no ``modules.json`` (a plain checkpoint). Modules we do not run (Dense, LayerNorm, ...) and pooling modes we do
    not have are errors that name them."""
    root = Path(directory)
    if not (root / "modules.json").is_file():
        return None
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{root / 'modules.json'} is not valid JSON: {error}") from error
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise ValueError(f"{root / 'modules.json'} is not a list of modules with a type each.")
    kinds = [ST_TYPES.get(module["type"]) for module in modules]
    unknown = [module["type"] for module, kind in zip(modules, kinds, strict=True) if kind is None]
    if unknown or kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise ValueError(f"{root} chains the modules {[m['type'] for m in modules]}; peftcore runs a Transformer, "
                         "then Pooling, then optionally Normalize" + (f" ({unknown} are not supported)." if unknown
                                                                      else "."))
    if modules[0].get("path", "") not in ("", "."):
        raise ValueError(f"{root}: the encoder sits in {modules[0]['path']!r}; peftcore reads it from the directory "
                         "itself (path \"\").")
    pooling = io.read_json(root / modules[1]["path"] / "config.json")
    mode = pooling.get("pooling_mode")
    modes = ([mode] if isinstance(mode, str) else list(mode)) if mode is not None else [
        LEGACY_POOLING.get(key, key) for key, on in pooling.items() if key.startswith("pooling_mode_") and on is True]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(f"{root / modules[1]['path']} pools by {modes or 'nothing'}; peftcore pools by exactly one "
                         f"of {list(POOLING_MODES)}.")
    settings_file = root / "sentence_bert_config.json"
    settings = io.read_json(settings_file) if settings_file.is_file() else {}
    return SentenceTransformersConfig(modes[0], kinds[-1] == "Normalize", settings.get("max_seq_length"))


def write_sentence_transformers(directory: str | os.PathLike, config: SentenceTransformersConfig,
                                hidden_size: int) -> None:
    """Write the module files that make the checkpoint in ``directory`` a sentence-transformers model with
    ``config``'s pooling and normalisation (the legacy pooling keys, which every sentence-transformers version
    reads)."""
    root = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (root / "2_Normalize").mkdir(parents=True, exist_ok=True)
    (root / "1_Pooling").mkdir(parents=True, exist_ok=True)
    pooling = {"word_embedding_dimension": hidden_size,
               **{key: mode == config.pooling_mode for key, mode in LEGACY_POOLING.items()},
               **dict.fromkeys(UNSUPPORTED_POOLING, False)}
    (root / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    io.write_json(root / "1_Pooling" / "config.json", pooling)
    io.write_json(root / "sentence_bert_config.json", {"max_seq_length": config.max_seq_length,
                                                       "do_lower_case": False})


def save_sentence_transformers(model: nn.Module, directory: str | os.PathLike, head: str,
                               max_seq_length: int | None = None) -> None:
    """Write ``model`` as a sentence-transformers directory embedding with its ``sentence_embedding`` head ``head``:
    the transformers checkpoint (adapters must be merged into the weights first: ``merge_adapter``) and the module
    files. Copy the tokenizer files beside it for sentence-transformers to load it."""
    if head not in model.heads or not isinstance(model.heads[head], EmbeddingHead):
        raise ValueError(f"{head!r} is not a sentence_embedding head of this model; add one with add_embedding_head.")
    unmerged = sorted(set(model.active_adapters.flatten() if model.active_adapters else ()) - model.merged_adapters())
    if unmerged:
        raise ValueError(f"adapters {unmerged} are active but not merged, and a sentence-transformers directory holds "
                         "only the encoder's weights: merge_adapter() each first (LoRA, IA3).")
    config = model.heads[head].config
    model.save_pretrained(directory, format="hf")
    write_sentence_transformers(directory, SentenceTransformersConfig(config["pooling_mode"], config["normalize"],
                                                                      max_seq_length), model.config.hidden_size)


def encode_texts(model: nn.Module, tokenizer: Callable[..., dict[str, Tensor]], texts: Sequence[str],
                 batch_size: int = 64, max_length: int | None = None) -> Tensor:
    """The embeddings (N, C) of ``texts`` by ``model``'s active ``sentence_embedding`` head, ``batch_size`` at a
    time, without gradients."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), max_length=max_length)
            device = next(model.parameters()).device
            parts.append(model(**{key: value.to(device) for key, value in batch.items()}).logits.float().cpu())
    return torch.cat(parts) if parts else torch.empty(0)


__all__ = ["LOSSES", "POOLING_MODES", "EmbeddingHead", "EmbeddingLoss", "SentenceTransformersConfig",
           "cosine_similarity_loss", "encode_texts", "multiple_negatives_ranking_loss", "pair_examples", "pool",
           "read_sentence_transformers", "retrieval_metrics", "save_sentence_transformers", "triplet_loss",
           "write_sentence_transformers"]
