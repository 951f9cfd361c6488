"""What every adapter head answers to the forward (``AdapterHead``), and AdapterHub's biaffine dependency-parsing head
(``adapters.heads.dependency_parsing.BiaffineParsingHead``, after Glavaš & Vulić 2021, https://arxiv.org/abs/2008.06788)
in its module names, so its files load key for key.

A head reads the encoder's output; some also read inputs of their own (the parser: ``word_starts``) or reshape the
encoder's inputs (multiple choice: (B, choices, T) runs as (B·choices, T)). forward.py asks each head through the hooks
of ``AdapterHead`` and never by its type.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdapterHead:
    """The hooks forward.py calls on an adapter head (a mixin of the head modules)."""

    input_names: ClassVar[tuple[str, ...]] = ()  # forward keyword arguments the head reads besides the encoder's
    encoder_input_names: ClassVar[tuple[str, ...]] = ()  # encoder inputs it reads too (pooling: the mask)
    target_names: ClassVar[tuple[str, ...]] = ("labels",)  # forward keyword arguments that hold its targets

    @property
    def input_layout(self) -> Hashable:
        """What the head needs of the encoder's inputs: None for (B, T); heads that run together must agree."""
        return None

    def encoder_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any], dict[str, Any]]:
        """The forward's inputs as the encoder takes them (the same, but for multiple choice), and what the head learns
        from them for its predictions (a model's own multiple-choice head: ``num_choices``)."""
        return args, kwargs, {}

    def predict(self, out: Any, inputs: Mapping[str, Tensor]) -> None:
        """Set the head's predictions on the encoder output ``out`` (``logits``), given its own ``inputs``."""
        out.logits = self(out.last_hidden_state, out.pooler_output)

    def output_loss(self, out: Any, labels: Tensor, attention_mask: Tensor | None) -> Tensor:
        """The loss of ``out``'s predictions against ``labels`` (the stacked ``target_names``)."""
        return self.loss(out.logits, labels, attention_mask)

    def get_output_embeddings(self) -> nn.Module | None:
        """None: no layer of this head is tied to the word embeddings (AdapterHub's head method)."""
        return None


class Biaffine(nn.Module):
    """s[b, o, x, y] = [x_bx; 1] · W_o · [y_by; 1] (the ones where ``bias_x`` / ``bias_y``): Dozat & Manning's
    biaffine scorer, ``weight`` (n_out, n_in + bias_x, n_in + bias_y), zero at start as AdapterHub's."""

    def __init__(self, n_in: int, n_out: int = 1, bias_x: bool = True, bias_y: bool = True) -> None:
        super().__init__()
        self.bias_x, self.bias_y = bias_x, bias_y
        self.weight = nn.Parameter(torch.zeros(n_out, n_in + bias_x, n_in + bias_y))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if self.bias_x:
            x = torch.cat((x, torch.ones_like(x[..., :1])), -1)
        if self.bias_y:
            y = torch.cat((y, torch.ones_like(y[..., :1])), -1)
        return torch.einsum("bxi,oij,byj->boxy", x, self.weight, y)  # (B, n_out, X, Y)


class BiaffineParsingHead(AdapterHead, nn.Module):
    """AdapterHub's dependency-parsing head: words are the means of their subword states (``word_starts``), the
    candidate heads are the first token (the root) then the words; arcs and relations are scored biaffinely.

    Predictions: ``arc_preds`` (B, T, T+1), word i's score for each head (0: root, j: word j), and ``logits``
    (also ``rel_preds``) (B, T, T+1, L), each relation's score for each head; rows past a sentence's last word score
    a zero vector, as AdapterHub pads them. ``pad_token_id`` marks padding in ``word_starts`` and ``labels_arcs``
    (AdapterHub's convention, so in BERT, whose pad id is 0, arcs to the root are left out of the loss).
    """

    input_names = ("word_starts",)
    target_names = ("labels_arcs", "labels_rels")

    def __init__(self, config: Mapping[str, Any], hidden_size: int, dropout: float, pad_token_id: int) -> None:
        super().__init__()
        self.config = dict(config)
        self.pad_token_id = pad_token_id
        self.biaffine_arcs = Biaffine(hidden_size, bias_x=True, bias_y=False)
        self.biaffine_rels = Biaffine(hidden_size, n_out=config["num_labels"], bias_x=True, bias_y=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, word_starts: Tensor) -> tuple[Tensor, Tensor]:
        """Hidden states (B, T, C) and word starts (B, W) -> (arc scores (B, T, T+1), relation scores
        (B, T, T+1, L))."""
        x = self.dropout(x)
        words = word_means(x, word_starts, self.pad_token_id)  # (B, T, C)
        candidates = torch.cat((x[:, :1], words), dim=1)  # (B, T+1, C): the root, then the words
        arcs = self.biaffine_arcs(words, candidates).squeeze(1)
        rels = self.biaffine_rels(words, candidates).permute(0, 2, 3, 1)
        return arcs, rels

    def predict(self, out: Any, inputs: Mapping[str, Tensor]) -> None:
        word_starts = inputs.get("word_starts")
        if word_starts is None:
            raise ValueError("a dependency_parsing head needs word_starts: pass word_starts=(batch, words + 1) "
                             "token indices where each word starts, then where the last one ends.")
        check_word_starts(word_starts, out.last_hidden_state.shape[:2], self.pad_token_id)
        out.arc_preds, out.logits = self(out.last_hidden_state, word_starts)

    def output_loss(self, out: Any, labels: Tensor, attention_mask: Tensor | None) -> Tensor:
        """AdapterHub's parsing loss: cross-entropy of each labelled word's arc scores against its head
        (``labels[..., 0]``, ``labels_arcs``), plus that of its relation scores at its gold head against its relation
        (``labels[..., 1]``, ``labels_rels``); words whose head is ``pad_token_id`` are left out."""
        arcs, rels = labels.unbind(-1)
        check_parse_labels(arcs, rels, out.logits.shape, self.pad_token_id)
        labelled = arcs.ne(self.pad_token_id)
        arcs, rels = arcs[labelled], rels[labelled]
        loss = F.cross_entropy(out.arc_preds[labelled], arcs)
        at_gold_head = out.logits[labelled][torch.arange(len(arcs), device=arcs.device), arcs]  # (N, L)
        return loss + F.cross_entropy(at_gold_head, rels)


def word_means(x: Tensor, word_starts: Tensor, pad_token_id: int) -> Tensor:
    """(B, T, C) subword states -> (B, T, C) word states: row i's word j is the mean of tokens
    [starts[j], starts[j+1]), where ``starts`` is ``word_starts[i]`` without its ``pad_token_id`` entries, up to the
    first non-positive start; rows past the last word are zero (AdapterHub's ``_merge_subword_tokens``)."""
    tokens = x.shape[1]
    starts, ends, is_word = (fitted(t, tokens) for t in word_spans(word_starts, pad_token_id))  # (B, T) each
    positions = torch.arange(tokens, device=x.device)
    inside = (positions >= starts[..., None]) & (positions < ends[..., None]) & is_word[..., None]  # (B, T, T)
    weights = inside.to(x.dtype) / (ends - starts).clamp(min=1)[..., None].to(x.dtype)
    return torch.bmm(weights, x)


def fitted(t: Tensor, width: int) -> Tensor:
    """(B, W) cut or zero-padded to (B, ``width``)."""
    return F.pad(t, (0, width - t.shape[1])) if t.shape[1] < width else t[:, :width]


def word_spans(word_starts: Tensor, pad_token_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's word spans: starts, ends and whether slot j is a word, (B, W-1) each. The starts are the entries
    other than ``pad_token_id`` in order; word j runs from start j to start j+1, up to the first start j+1 that is
    missing or not positive."""
    kept = word_starts.ne(pad_token_id)
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)  # kept entries first, in their order
    starts = torch.where(torch.gather(kept, 1, order), torch.gather(word_starts, 1, order), 0)
    is_word = starts[:, 1:].le(0).to(torch.int64).cumsum(1).eq(0)  # before the first missing or non-positive end
    return starts[:, :-1], starts[:, 1:], is_word


def check_word_starts(word_starts: Tensor, batch_tokens: tuple[int, int], pad_token_id: int) -> None:
    """word_starts (B, W): integer token indices in [0, T], at most T words, each word's span not empty."""
    rows, tokens = batch_tokens
    if word_starts.dim() != 2 or word_starts.shape[0] != rows:
        raise ValueError(f"word_starts has shape {tuple(word_starts.shape)}; pass one row per sequence: "
                         f"({rows}, words + 1).")
    if word_starts.is_floating_point() or word_starts.dtype == torch.bool:
        raise ValueError(f"word_starts are {word_starts.dtype}; pass integer token indices (torch.long).")
    if word_starts.numel() and (word_starts.min() < 0 or word_starts.max() > tokens):
        raise ValueError(f"word_starts hold token indices outside [0, {tokens}] (the batch has {tokens} tokens).")
    starts, ends, is_word = word_spans(word_starts, pad_token_id)
    if bool((is_word.sum(1) > tokens).any()):
        raise ValueError(f"word_starts give more than {tokens} words for a sequence of {tokens} tokens.")
    if bool((is_word & ends.le(starts)).any()):
        raise ValueError("word_starts must increase: each word ends after it starts (AdapterHub averages an empty "
                         "span there, giving NaN).")


def check_parse_labels(arcs: Tensor, rels: Tensor, rel_shape: torch.Size, pad_token_id: int) -> None:
    """labels_arcs and labels_rels (B, T), their labelled entries within the head candidates and relations."""
    rows, words, candidates, relations = rel_shape
    for name, tensor in (("labels_arcs", arcs), ("labels_rels", rels)):
        if tuple(tensor.shape) != (rows, words):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; the dependency_parsing head predicts "
                             f"({rows}, {words}) words: one label per word slot, {pad_token_id} (the pad id) "
                             "in labels_arcs where there is none.")
    labelled = arcs.ne(pad_token_id)
    if labelled.any() and (arcs[labelled].min() < 0 or arcs[labelled].max() >= candidates):
        raise ValueError(f"labels_arcs hold heads outside [0, {candidates}) (0 the root, j word j).")
    if labelled.any() and (rels[labelled].min() < 0 or rels[labelled].max() >= relations):
        raise ValueError(f"labels_rels hold relations outside [0, {relations}) (the head's num_labels).")


__all__ = ["AdapterHead", "Biaffine", "BiaffineParsingHead", "word_means"]
