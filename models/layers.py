"""Blocks shared by every encoder — embeddings, self-attention, feed-forward, the post-LN encoder layer, the pooler
and task heads, each with its sites (peftcore/sites.py) — and the config, padding and output types the models share.
``PretrainedEncoder`` (pretrained.py) runs the layers.

Axis legend, used in every shape comment and einops pattern of this package:
    B batch, T tokens, H heads, D head dim, C hidden, P prefix length, R rank, V vocabulary, L labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from types import UnionType
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import torch
from torch import Tensor, nn

from peftcore.models.attention import (
    attend_explicitly,
    attend_scattered,
    attend_unpadded,
    merge_heads,
    sdpa,
    split_heads,
)
from peftcore.models.dropout import Dropout
from peftcore.sites import (
    ACTIVATIONS,
    PROBLEM_TYPES,
    EmbeddingSite,
    MaskedLMHead,
    OutputSite,
    PrefixSite,
    PromptSite,
    ResidualSite,
    SiteLinear,
)

HEADS = ("masked_lm", "sequence_classification", "token_classification", "question_answering",
         "image_classification", "multiple_choice")


MAX_LABELS = 1_000_000  # a classifier head's labels: a config may declare a head that no tensor of its file checks


def conforms(value: object, hint: object) -> bool:
    """Whether ``value`` is of the annotated type: no bool for a number, no string for a bool, finite floats, lists
    for tuples; annotations this does not know accept anything."""
    if get_origin(hint) in (Union, UnionType):
        return any(conforms(value, arg) for arg in get_args(hint))
    if get_origin(hint) is tuple:
        item = get_args(hint)[0] if get_args(hint) else object
        return isinstance(value, (tuple, list)) and all(conforms(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    return True


def check_types(config: object) -> None:
    """Every field of a config dataclass holds a value of its annotated type, or a TypeError names the field."""
    hints = get_type_hints(type(config))
    for field in fields(config):
        value = getattr(config, field.name)
        if not conforms(value, hints[field.name]):
            raise TypeError(f"{type(config).__name__}.{field.name} must be {hints[field.name]}, got {value!r} "
                            f"({type(value).__name__}).")


def check_choice(owner: str, field: str, value: object, choices: tuple | dict) -> None:
    """Raise a ValueError naming the field and the accepted values when ``value`` is not among ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}.{field}={value!r} is not supported; use one of {sorted(map(str, choices))}.")


def check_positive(owner: str, **fields: int) -> None:
    """Raise a ValueError naming the first field that is not a positive int."""
    for field, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}.{field} must be a positive int, got {value!r}.")


def additive_mask(attention_mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """(B, T) 1/0 padding mask -> (B, 1, 1, T) additive mask: 0 where attended, dtype's minimum where padded.

    The finite minimum (as transformers uses) keeps fully padded rows finite instead of NaN.
    """
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


@dataclass(frozen=True)
class Padding:
    """A batch's padding as the layers see it: the additive attention ``mask``, the (B, T) 1/0 ``attention_mask`` it
    was made from and, when the batch runs unpadded, the flat positions ``index`` (N,) of its real tokens in the
    ``shape`` (B, T) and each row's count of them.

    Unpadded, everything that acts on each token alone — linears, FFN, norms, residual sites and their adapters —
    runs on the N real tokens packed as (1, N, C), each row's tokens in a run. Attention runs on each row's run
    (models/attention.py ``attend_unpadded``), or pads q/k/v back to (B, T, C) around the softmax where it needs
    the padded layout (prefixes, position biases, returned probabilities). Without ``index`` packing and padding
    are the identity.
    """

    mask: Tensor | None = None
    index: Tensor | None = None
    shape: tuple[int, int] | None = None
    lengths: tuple[int, ...] | None = None
    attention_mask: Tensor | None = None
    compiled: bool = False  # packed in a compiled graph (models/compiled.py): ``index`` and ``mask`` without
    # ``shape`` and ``lengths``, which would be Python ints to recompile for; attention pads by ``index``

    @classmethod
    def of(cls, attention_mask: Tensor | None, mask: Tensor | None, unpad: bool) -> Padding:
        """The padding of a (B, T) 1/0 attention mask; unpadded when ``unpad`` and the batch has padding, all of it
        after each row's first token; without the additive ``mask`` when ``unpad`` and the batch has no padding.

        torch.compile keeps the padded layout: the packed length N depends on the data.
        """
        if not unpad or attention_mask is None or torch.compiler.is_compiling():
            return cls(mask, attention_mask=attention_mask)
        real = attention_mask != 0
        index = real.flatten().nonzero().squeeze(1)  # (N,)
        if index.numel() == attention_mask.numel():  # no padding: no mask either, whose zeros attention would add
            return cls(attention_mask=attention_mask)
        if not bool(real[:, 0].all()):  # a row that starts with padding (left padding) stays padded: the pooler and
            # first-token heads read position 0, which transformers computes, masked or not
            return cls(mask, attention_mask=attention_mask)
        return cls(mask, index, tuple(attention_mask.shape), tuple(real.sum(dim=1).tolist()), attention_mask)

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, ...) -> (1, N, ...): the real tokens only."""
        return x if self.index is None else x.flatten(0, 1)[self.index].unsqueeze(0)

    def pad(self, x: Tensor) -> Tensor:
        """(1, N, ...) -> (B, T, ...), zeros at the padded positions."""
        if self.index is None:
            return x
        flat = x.new_zeros(self.shape[0] * self.shape[1], *x.shape[2:]).index_copy(0, self.index, x[0])
        return flat.unflatten(0, self.shape)


class Embeddings(nn.Module):
    """word + token type + position embeddings, then LayerNorm (unless ``norm`` is off: pre-LN models normalise in
    each layer) and dropout (BERT, RoBERTa, ELECTRA).

    They are ``config.embedding_width`` (E) wide, which is C but in models that project narrower embeddings up to C
    (ELECTRA's ``embeddings_project``): then ``proj`` does so after the embeddings site, which sees the E-wide
    embeddings as AdapterHub's invertible adapters do.
    """

    def __init__(self, config: EncoderConfig, norm: bool = True) -> None:
        super().__init__()
        E, C = config.embedding_width, config.hidden_size
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, E)
        self.token_type = nn.Embedding(config.type_vocab_size, E)
        self.norm = nn.LayerNorm(E, eps=config.layer_norm_eps) if norm else nn.Identity()
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.site = EmbeddingSite(E)  # site embeddings
        self.proj = nn.Linear(E, C) if E != C else None

    def forward(self, input_ids: Tensor | None, token_type_ids: Tensor, position_ids: Tensor,
                inputs_embeds: Tensor | None = None) -> Tensor:
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        x = x + self.token_type(token_type_ids) + self.position(position_ids)
        x = self.site(self.dropout(self.norm(x)))
        return x if self.proj is None else self.proj(x)  # (B, T, C)


def prompt_site(embeddings: nn.Module, embed_text: Callable[[str], Tensor] | None = None) -> PromptSite:
    """The prompt site after ``embeddings``: as wide as their embedding site, through their ``proj`` where they
    project up after it (the inserted vectors meet the layers as the embedded tokens do); ``embed_text`` embeds a
    text's tokens (the model's ``embed_text``)."""
    proj = getattr(embeddings, "proj", None)
    return PromptSite(embeddings.site.width, None if proj is None else proj.__call__, embed_text)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with its q/k/v, prefix and residual sites."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, residual_norm: nn.Module | None,
                 qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout_p = dropout
        self.q = SiteLinear(hidden_size, hidden_size, qkv_bias)  # site attn.q
        self.k = SiteLinear(hidden_size, hidden_size, qkv_bias)  # site attn.k
        self.v = SiteLinear(hidden_size, hidden_size, qkv_bias)  # site attn.v
        self.prefix = PrefixSite()  # site attn.prefix
        self.out = SiteLinear(hidden_size, hidden_size)  # site attn.out
        self.residual = ResidualSite(residual_norm)  # site attn.residual (applied by the layer)

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C), or the packed real tokens (1, N, C) when ``padding`` says so -> the same shape."""
        q, k, v = (proj(x) for proj in (self.q, self.k, self.v))
        dropout_p = self.dropout_p if self.training else 0.0
        if padding.compiled:
            return self.out(attend_scattered(q, k, v, padding.index, padding.mask, self.num_heads, dropout_p)), None
        if padding.lengths is not None and not output_attentions:
            prefix = self.prefix_rows(x, len(padding.lengths))
            return self.out(attend_unpadded(q, k, v, padding.lengths, self.num_heads, dropout_p, prefix)), None
        q, k, v = (split_heads(padding.pad(t), self.num_heads) for t in (q, k, v))  # (B, H, T, D)
        mask = padding.mask
        if self.prefix.plug is not None:
            k, v, mask = self.prefix(k, v, mask, x)  # (B, H, P+T, D)
        if output_attentions:
            y, probs = attend_explicitly(q, k, v, mask, dropout_p)
        else:
            y, probs = sdpa(q, k, v, mask, dropout_p), None
        return self.out(padding.pack(merge_heads(y))), probs  # (B, T, C)

    def prefix_rows(self, x: Tensor, rows: int) -> tuple[Tensor, Tensor] | None:
        """Each row's prefix keys and values (B, H, P, D): the prefix site run on no tokens. None when it is empty."""
        if self.prefix.plug is None:
            return None
        none = x.new_empty(rows, self.num_heads, 0, x.shape[-1] // self.num_heads)
        k, v, _ = self.prefix(none, none, None, x)  # x: the packed tokens a gate averages per row
        return k, v


class FeedForward(nn.Module):
    """intermediate -> activation -> output, with its two linear sites and its residual site."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str,
                 residual_norm: nn.Module | None) -> None:
        super().__init__()
        self.intermediate = SiteLinear(hidden_size, intermediate_size)  # site ffn.intermediate
        self.act = ACTIVATIONS[activation]
        self.output = SiteLinear(intermediate_size, hidden_size)  # site ffn.output
        self.residual = ResidualSite(residual_norm)  # site ffn.residual (applied by the layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.act(self.intermediate(x)))


class EncoderLayer(nn.Module):
    """Post-LN Transformer layer (BERT, RoBERTa): x = norm(x + attn(x)); x = norm(x + ffn(x))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.attn = SelfAttention(C, config.num_attention_heads, config.attention_probs_dropout_prob,
                                  nn.LayerNorm(C, eps=eps))
        self.ffn = FeedForward(C, config.intermediate_size, config.hidden_act, nn.LayerNorm(C, eps=eps))
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.output = OutputSite()  # site output

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        h, probs = self.attn(x, padding, output_attentions)
        x = self.attn.residual(self.dropout(h), x)  # site attn.residual
        x = self.ffn.residual(self.dropout(self.ffn(x)), x)  # site ffn.residual
        return self.output(x, padding), probs  # site output


class PreNormLayer(nn.Module):
    """Pre-LN Transformer layer (ViT, Megatron-BERT): x = x + attn(norm(x)); x = x + ffn(norm(x)). Its residual
    sites have no norm, so an empty one is the plain ``h + x``."""

    def __init__(self, config: EncoderConfig, qkv_bias: bool = True) -> None:
        super().__init__()
        C, eps = config.hidden_size, config.layer_norm_eps
        self.attn_norm = nn.LayerNorm(C, eps=eps)
        self.attn = SelfAttention(C, config.num_attention_heads, config.attention_probs_dropout_prob, None, qkv_bias)
        self.ffn_norm = nn.LayerNorm(C, eps=eps)
        self.ffn = FeedForward(C, config.intermediate_size, config.hidden_act, None)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.output = OutputSite()  # site output

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        h, probs = self.attn(self.attn_norm(x), padding, output_attentions)
        x = self.attn.residual(self.dropout(h), x)  # site attn.residual
        x = self.ffn.residual(self.dropout(self.ffn(self.ffn_norm(x))), x)  # site ffn.residual
        return self.output(x, padding), probs  # site output


class Pooler(nn.Module):
    """tanh(W x[:, 0] + b): the first token's hidden state through a dense layer."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))  # (B, C)


def masked_lm_head(config: EncoderConfig) -> MaskedLMHead:
    """BERT's language-model head (peftcore.sites.MaskedLMHead, named as transformers names it), onto the embedding
    width; tied to the word embeddings when the config says so."""
    return MaskedLMHead(config.hidden_size, config.embedding_width, config.vocab_size, config.hidden_act,
                        config.layer_norm_eps)


class PooledClassificationHead(nn.Module):
    """BERT's sequence classifier: dropout and a linear layer on the pooled output."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        if pooled is None:
            raise ValueError("this classification head reads the pooled output; build the model with "
                             "add_pooling_layer=True.")
        return self.classifier(self.dropout(pooled))  # (B, L)


class FirstTokenClassificationHead(nn.Module):
    """RoBERTa's sequence classifier: dense -> tanh -> out_proj on the first token, with dropout before each.
    ELECTRA's is the same with gelu (``activation``)."""

    def __init__(self, config: EncoderConfig, activation: str = "tanh") -> None:
        super().__init__()
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACTIVATIONS[activation]
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        h = self.act(self.dense(self.dropout(x[:, 0])))
        return self.out_proj(self.dropout(h))  # (B, L)


class TokenClassificationHead(nn.Module):
    """dropout and a linear layer on every token."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return self.classifier(self.dropout(x))  # (B, T, L)


class QuestionAnsweringHead(nn.Module):
    """A linear layer giving each token a span-start and a span-end logit."""

    predicts_spans = True

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return self.qa_outputs(x)  # (B, T, 2)


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Fields every encoder shares, under transformers' config.json names, plus the task head to build.

    ``head`` is one of ``HEADS`` or None; ``add_pooling_layer`` builds the pooler.
    """

    model_type: ClassVar[str]
    vocab_size: int
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    tie_word_embeddings: bool = True
    add_pooling_layer: bool = True
    head: str | None = None
    num_labels: int = 2
    classifier_dropout: float | None = None
    problem_type: str | None = None  # a sequence classifier's loss (PROBLEM_TYPES); None: from num_labels and labels
    bos_token_id: int | None = None  # the tokenizer's special tokens, kept as transformers keeps them
    eos_token_id: int | None = None
    is_encoder_decoder: ClassVar[bool] = False  # transformers' flag: every model here is an encoder

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_types(self)
        check_positive(name, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                       num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                       intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
                       num_labels=self.num_labels)
        if self.num_labels > MAX_LABELS:
            raise ValueError(f"{name}.num_labels={self.num_labels} exceeds {MAX_LABELS:,}, the most a classifier "
                             "head here may have; is the config file right?")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"{name}.layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"{name}.initializer_range must not be negative, got {self.initializer_range!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{name}.hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}.")
        check_choice(name, "hidden_act", self.hidden_act, ACTIVATIONS)
        check_choice(name, "head", self.head, (None, *HEADS))
        check_choice(name, "problem_type", self.problem_type, (None, *PROBLEM_TYPES))
        if self.head == "question_answering" and self.num_labels != 2:
            raise ValueError(f"{name}: a question_answering head predicts span start and end, so num_labels must be "
                             f"2, got {self.num_labels}.")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError(f"{name}.{field} must lie in [0, 1), got {getattr(self, field)!r}.")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"{name}.pad_token_id={self.pad_token_id} lies outside the vocabulary "
                             f"(vocab_size={self.vocab_size}).")

    def to_dict(self) -> dict[str, Any]:
        """The fields by name (what our checkpoints' config.json holds under "config")."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def to_json_string(self) -> str:
        """``to_dict()`` as JSON (transformers' config method of that name)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def embedding_width(self) -> int:
        """Width of the word embeddings and of a tied LM decoder: hidden_size unless a model says otherwise."""
        return self.hidden_size

    @property
    def classifier_dropout_prob(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout


FIRST_KEYS = ("loss", "start_logits", "end_logits", "logits", "arc_preds")  # transformers' task outputs (and
# AdapterHub's parsing output: loss, rel_preds, arc_preds) lead with these


@dataclass
class EncoderOutput:
    """What a forward returns. Fields a call did not ask for, or the model has no head for, are None.

    Indexable as transformers' ``ModelOutput``: ``out[0]``, ``out[1:]``, ``len(out)`` and ``to_tuple()`` run over the
    fields that are not None in the order of transformers' task outputs (``loss``, the span logits, ``logits``),
    then in field order; ``out["logits"]`` and ``keys()`` name them.
    """

    last_hidden_state: Tensor  # (B, T, C)
    pooler_output: Tensor | None = None  # (B, C)
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings output, then each layer's: (B, T, C) each
    attentions: tuple[Tensor, ...] | None = None  # (B, H, T, T) each
    logits: Tensor | None = None  # (B, L), (B, T, L), (B, T, V) or (B, T, 2) by head
    start_logits: Tensor | None = None  # (B, T), question answering only
    end_logits: Tensor | None = None  # (B, T), question answering only
    arc_preds: Tensor | None = None  # (B, T, T+1), dependency parsing only: each word's score for each head
    adapter_gating_scores: dict | None = None  # {adapter: {layer: {location: np.ndarray}}}, when asked for
    adapter_fusion_attentions: dict | None = None  # {fusion: {layer: {location: np.ndarray (B, T, N)}}}, when asked
    loss: Tensor | None = None  # scalar, when the forward was given labels
    token_positions: Tensor | None = None  # (B, T): where each input token sits in the per-token tensors, while they
    # are longer than the input (a prompt inserted); the model's forward cuts them back and clears it. Not a key.

    def keys(self) -> list[str]:
        """The names of the fields that are not None: the predictions first, as transformers' task outputs have them
        (``loss``, ``start_logits``, ``end_logits``, ``logits``), then in field order."""
        names = [*FIRST_KEYS, *(field.name for field in fields(self)
                                if field.name not in FIRST_KEYS and field.name != "token_positions")]
        return [name for name in names if getattr(self, name) is not None]

    def __len__(self) -> int:
        return len(self.keys())

    @property
    def rel_preds(self) -> Tensor | None:
        """A parsing head's relation scores (B, T, T+1, L): its ``logits``, under AdapterHub's name."""
        return self.logits

    def to_tuple(self) -> tuple:
        """The values of ``keys()``, in their order."""
        return tuple(getattr(self, name) for name in self.keys())

    def __getitem__(self, key: int | slice | str) -> object:
        """A field by ``key``: its name (one of ``keys()``), or an index or slice of ``to_tuple()``."""
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r} is not set in this output; it has {self.keys()}.")
            return getattr(self, key)
        return self.to_tuple()[key]
