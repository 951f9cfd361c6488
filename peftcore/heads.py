"""Prediction heads named after adapters, in the layout of AdapterHub's flexible heads
(``adapters.heads.base.PredictionHead`` and ``BertStyleMaskedLMHead``), so their files load key for key, and the
calls that add, build and delete them.

A head is built from its config dict — AdapterHub's ``head_config.json`` ``"config"`` — by ``build``, both when a
user adds one and when one is loaded, so the two can never disagree.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from peftcore import placement
from peftcore.composition import Block, normalized
from peftcore.embeddings import EmbeddingHead
from peftcore.head_types import AdapterHead, BiaffineParsingHead
from peftcore.host import AdapterHost
from peftcore.sites import Activation, MaskedLMHead, flatten_choices, task_loss

TOKEN_LEVEL = ("tagging", "question_answering")
SEQUENCE_LEVEL = ("classification", "multilabel_classification", "image_classification")
EMBEDDING = "sentence_embedding"  # pooling, no layers (embeddings.py)
HEAD_TYPES = (*SEQUENCE_LEVEL, *TOKEN_LEVEL, "multiple_choice", "dependency_parsing", "masked_lm", EMBEDDING)


class PredictionHead(AdapterHead, nn.Sequential):
    """[Dropout, Linear(C, C), act] × (layers - 1), then [Dropout, Linear(C, L)]; AdapterHub's module numbering.

    Sequence-level heads read the first token (or the pooler output with ``use_pooler``); token-level heads read
    every token. Question answering gives (B, T, 2): span-start and span-end logits. ``outputs`` is L (default: the
    config's ``num_labels``).
    """

    def __init__(self, config: Mapping[str, Any], hidden_size: int, dropout: float, outputs: int | None = None
                 ) -> None:
        outputs = config["num_labels"] if outputs is None else outputs
        layers = []
        for index in range(config["layers"]):
            layers.append(nn.Dropout(dropout))
            if index < config["layers"] - 1:
                layers.append(nn.Linear(hidden_size, hidden_size))
                if config["activation_function"]:
                    layers.append(Activation(config["activation_function"]))
            else:
                layers.append(nn.Linear(hidden_size, outputs, bias=config.get("bias", True)))
        super().__init__(*layers)
        self.config = dict(config)
        self.predicts_spans = config["head_type"] == "question_answering"

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        if self.config["head_type"] in TOKEN_LEVEL:
            return super().forward(x)  # (B, T, L)
        if self.config.get("use_pooler"):
            if pooled is None:
                raise ValueError("this head has use_pooler=True but the model has no pooler; add the head with "
                                 "use_pooler=False.")
            return super().forward(pooled)  # (B, L)
        return super().forward(x[:, 0])  # (B, L)

    def loss(self, logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """AdapterHub's loss for the head type of ``logits`` against ``labels``: cross-entropy, BCE (multi-label),
        MSE (one label: regression) or the span loss (question answering: ``labels`` (B, 2) start and end); a tagging
        head ignores the tokens ``attention_mask`` marks as padding."""
        head_type, num_labels = self.config["head_type"], self.config["num_labels"]
        # image heads flag multi-label in the config, and AdapterHub checks regression first for them
        if head_type == "multilabel_classification" or (self.config.get("multilabel") and num_labels != 1):
            return task_loss("multi_label_classification", logits, labels)
        if head_type in SEQUENCE_LEVEL and num_labels == 1:
            return task_loss("regression", logits, labels)
        if head_type == "question_answering":
            return task_loss("span", logits, labels)
        if head_type == "tagging" and attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        return task_loss("single_label_classification", logits, labels)


class MultipleChoiceHead(PredictionHead):
    """AdapterHub's multiple-choice head: a classification head scoring each choice with one output on its first
    token (or pooler output); the forward's (B, num_choices, T) inputs run through the encoder as (B·num_choices, T)
    and the scores come back as logits (B, num_choices)."""

    def __init__(self, config: Mapping[str, Any], hidden_size: int, dropout: float) -> None:
        super().__init__(config, hidden_size, dropout, outputs=1)
        self.choices = config["num_choices"]

    @property
    def input_layout(self) -> Hashable:
        return ("choices", self.choices)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        return super().forward(x, pooled).view(-1, self.choices)  # (B·choices, 1) -> (B, choices)

    def encoder_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any], dict[str, Any]]:
        """Every input tensor (B, num_choices, ...) flattened to (B·num_choices, ...) (``flatten_choices``)."""
        args, kwargs, _ = flatten_choices(args, kwargs, self.choices)
        return args, kwargs, {}

    def loss(self, logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Cross-entropy of the choice scores (B, num_choices) against the right choice's index (B,)."""
        if tuple(labels.shape) != tuple(logits.shape[:1]):
            raise ValueError(f"labels has shape {tuple(labels.shape)}; a multiple_choice head takes one label per "
                             f"example, the index of the right choice: ({logits.shape[0]},).")
        return task_loss("single_label_classification", logits, labels)


class MaskedLMPredictionHead(AdapterHead, MaskedLMHead):
    """A masked-LM adapter head: BERT's LM head numbered 0, 1, 2, 3 as AdapterHub's BertStyleMaskedLMHead, with its
    config and loss. It maps the hidden states to the ``embedding_size`` of the word embeddings its decoder is tied
    to (narrower than the hidden size in ELECTRA and ALBERT)."""

    def __init__(self, config: Mapping[str, Any], hidden_size: int, layer_norm_eps: float) -> None:
        if config["layers"] != 2 or not config.get("layer_norm", True):
            raise ValueError("masked_lm heads have layers=2 and layer_norm=True (BERT's LM head); got "
                             f"layers={config['layers']}, layer_norm={config.get('layer_norm')}.")
        width = config.get("embedding_size") or hidden_size
        super().__init__(hidden_size, width, config["vocab_size"], config["activation_function"],
                         layer_norm_eps, bias=config.get("bias", True), numbered=True)
        self.config = dict(config)

    def get_output_embeddings(self) -> nn.Linear:
        """The decoder, whose weight is the word embeddings' (AdapterHub's head method)."""
        return self.decoder


MAX_LAYERS, MAX_LABELS = 64, 1_000_000  # what a head config may declare: a file's small config must not make us
# build (or allocate) what it declares before its tensors are compared
FIELD_TYPES = {  # AdapterHub's head config fields, with the types they must have
    "layers": int, "num_labels": int, "vocab_size": int, "embedding_size": (int, type(None)),
    "activation_function": (str, type(None)), "bias": bool, "use_pooler": bool, "multilabel": bool, "layer_norm": bool,
    "shift_labels": bool, "dropout_prob": (float, int, type(None)), "label2id": (dict, type(None)),
    "id2label": (dict, type(None)), "num_choices": int, "pooling_mode": str, "normalize": bool,
}
PARSING = "dependency_parsing"  # the head type without layers: its biaffine scorers are all it has
HEAD_CLASSES = (PredictionHead, MultipleChoiceHead, BiaffineParsingHead, MaskedLMPredictionHead, EmbeddingHead)
INPUT_ARGS = tuple(dict.fromkeys(name for cls in HEAD_CLASSES for name in cls.input_names))  # a forward's head inputs


def head_config(head_type: str, **fields: Any) -> dict[str, Any]:
    """A head config dict in AdapterHub's layout, validated: its type, each field's type, sizes within bounds."""
    if head_type not in HEAD_TYPES:
        raise ValueError(f"head type {head_type!r} is not known; use one of {list(HEAD_TYPES)}.")
    config = {"head_type": head_type, **fields}
    for field, types in FIELD_TYPES.items():
        value = config.get(field)
        if field in config and (not isinstance(value, types) or (isinstance(value, bool) and bool not in (
                types if isinstance(types, tuple) else (types,)))):
            raise TypeError(f"head config field {field} must be {types}, got {value!r}.")
    if head_type == EMBEDDING:
        return config
    layers = config.get("layers")
    if head_type != PARSING and (not isinstance(layers, int) or isinstance(layers, bool) or layers < 1):
        raise ValueError(f"a head needs layers >= 1, got {layers!r}.")
    if head_type != PARSING and layers > MAX_LAYERS:
        raise ValueError(f"a head has at most {MAX_LAYERS} layers, got {layers}.")
    if head_type != "masked_lm":
        field = "num_choices" if head_type == "multiple_choice" else "num_labels"
        labels = config.get(field)
        if not isinstance(labels, int) or isinstance(labels, bool) or labels < 1:
            raise ValueError(f"a {head_type} head needs {field} >= 1, got {labels!r}.")
        if labels > MAX_LABELS:
            raise ValueError(f"a {head_type} head has at most {MAX_LABELS:,} labels, got {labels:,}.")
        if head_type == "question_answering" and labels != 2:
            raise ValueError("a question_answering head predicts span start and end: num_labels must be 2.")
        if config.get("id2label") is not None and len(config["id2label"]) != labels:
            raise ValueError(f"id2label has {len(config['id2label'])} labels, num_labels is {labels}.")
    return config


def tied_embeddings(host: AdapterHost) -> tuple[int, int]:
    """(vocabulary, width) of the word embeddings a masked-LM head's decoder is tied to."""
    embeddings = host.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise ValueError(f"{type(host).__name__} embeds no tokens (its input embeddings are a "
                         f"{type(embeddings).__name__}), so it cannot take a masked_lm head.")
    return embeddings.num_embeddings, embeddings.embedding_dim


def new_head(config: Mapping[str, Any], hidden_size: int, embeddings: tuple[int, int] | None, dropout: float,
             layer_norm_eps: float, initializer_range: float, pad_token_id: int = 0) -> nn.Module:
    """The head a config dict describes, initialised as transformers initialises heads (a parser's biaffine weights
    zero, as AdapterHub's); ``embeddings`` is the shape (vocabulary, width) of the word embeddings a masked-LM head's
    decoder is tied to (``tied_embeddings``), ``pad_token_id`` what marks padding in a parser's word starts."""
    if config["head_type"] == "masked_lm":
        vocab_size, width = embeddings
        if config.get("vocab_size", vocab_size) != vocab_size:
            raise ValueError(f"the masked_lm head predicts {config['vocab_size']} tokens, the model has {vocab_size}.")
        if config.get("embedding_size", width) not in (width, None):
            raise ValueError(f"the masked_lm head is {config['embedding_size']} wide (embedding_size), the model's "
                             f"word embeddings are {width}.")
        config = {**config, "vocab_size": vocab_size, "embedding_size": width}
        head: nn.Module = MaskedLMPredictionHead(config, hidden_size, layer_norm_eps)
    else:
        rate = config.get("dropout_prob")
        rate = dropout if rate is None else rate
        if config["head_type"] == EMBEDDING:
            head = EmbeddingHead(config)
        elif config["head_type"] == PARSING:
            head = BiaffineParsingHead(config, hidden_size, rate, pad_token_id)
        elif config["head_type"] == "multiple_choice":
            head = MultipleChoiceHead(config, hidden_size, rate)
        else:
            head = PredictionHead(config, hidden_size, rate)
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return head


# ---- the calls on a model -----------------------------------------------------------------------------------------


def add(host: AdapterHost, name: str, config: dict[str, Any], overwrite_ok: bool, set_active: bool) -> None:
    """Add a head from an AdapterHub head config dict; it becomes the active head when ``set_active``."""
    placement.check_name(name)
    if name in host.heads and not overwrite_ok:
        raise ValueError(f"a head named {name!r} exists; pass overwrite_ok=True to replace it.")
    attach(host, name, build(host, config))
    if set_active:
        host.active_head = name


def build(host: AdapterHost, config: dict[str, Any], meta: bool = False) -> nn.Module:
    """A head from its config dict, on the model's device and dtype, a masked-LM head tied to the word embeddings
    and started from the model's own LM head when it has one; attaches nothing. ``meta`` builds it on the meta
    device, to learn its shapes without allocating."""
    config = head_config(**config)
    model = host.config
    dropout = model.classifier_dropout_prob if hasattr(model, "classifier_dropout_prob") else 0.1
    embeddings = tied_embeddings(host) if config["head_type"] == "masked_lm" else None
    with torch.device("meta") if meta else nullcontext():
        head = new_head(config, model.hidden_size, embeddings, dropout, model.layer_norm_eps,
                        getattr(model, "initializer_range", 0.02), model.pad_token_id)
    if isinstance(head, MaskedLMHead):
        head.decoder.weight = host.get_input_embeddings().weight
        if isinstance(host.head, MaskedLMHead) and not meta:
            with torch.no_grad():
                head.decoder.bias.copy_(host.head.decoder.bias)
                for mine, theirs in zip(head.parts()[:3], host.head.parts()[:3], strict=True):
                    mine.load_state_dict(theirs.state_dict())
    return placement.like_model(host, head, meta)


def attach(host: AdapterHost, name: str, head: nn.Module) -> None:
    host.heads[name] = head.train(host.training)


def check_known(host: AdapterHost, name: str) -> None:
    if name not in host.heads:
        raise KeyError(f"no head named {name!r}; this model has {sorted(host.heads) or 'none'}.")


def delete(host: AdapterHost, name: str) -> None:
    check_known(host, name)
    active = host.plan.branch_heads or host.active_head
    if active == name or (isinstance(active, Block) and name in active.flatten()):
        host.active_head = None
    del host.heads[name]


def labels(host: AdapterHost, name: str | None) -> dict[int, str] | None:
    """Head ``name``'s (default: the active head's) labels by id, in id order: its ``label2id`` inverted, AdapterHub's
    ``LABEL_{i}`` where it predicts labels it does not name, None where it predicts no labels (a masked-LM head)."""
    if name is None and not isinstance(host.active_head, str):
        raise ValueError(f"no head name given and no single head is active ({host.active_head!r}); pass head_name.")
    name = host.active_head if name is None else name
    check_known(host, name)
    return labels_of(host.heads[name].config)


def labels_of(config: Mapping[str, Any]) -> dict[int, str] | None:
    if config.get("label2id") is not None:
        return {int(i): label for label, i in sorted(config["label2id"].items(), key=lambda item: int(item[1]))}
    count = config.get("num_choices", config.get("num_labels"))
    return None if count is None else {i: f"LABEL_{i}" for i in range(count)}


def average(host: AdapterHost, name: str, head_list: Sequence[str] | Mapping[str, float],
            weights: Sequence[float] | None, normalize_weights: bool, overwrite_ok: bool, set_active: bool) -> None:
    """Attach head ``name`` (the active head when ``set_active``): the weighted average of the heads ``head_list`` (or
    ``{head: weight}``), which must be of one class and one config but for dropout (AdapterHub's ``average_head``);
    ``weights`` default to equal and are divided by their sum when ``normalize_weights``. A masked-LM decoder stays
    tied to the word embeddings."""
    if isinstance(head_list, Mapping):
        if weights is not None:
            raise ValueError("give the weights either in head_list (a dict of head: weight) or as weights, not both.")
        head_list, weights = list(head_list), list(head_list.values())
    names = list(head_list)
    if not names:
        raise ValueError("no heads to average; pass at least one head name.")
    for head in names:
        check_known(host, head)
    placement.check_name(name)
    if name in host.heads and not overwrite_ok:
        raise ValueError(f"a head named {name!r} exists; pass overwrite_ok=True to replace it.")
    weights = [1.0 / len(names)] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} heads to average but {len(weights)} weights; give one weight per head.")
    weights = normalized(weights, normalize_weights)
    first = host.heads[names[0]]
    for head in names[1:]:
        other = host.heads[head]
        if type(other) is not type(first):
            raise ValueError(f"heads {names[0]!r} and {head!r} are of different classes ({type(first).__name__}, "
                             f"{type(other).__name__}); only heads of one kind can be averaged.")
        if averaged_fields(other.config) != averaged_fields(first.config):
            raise ValueError(f"heads {names[0]!r} and {head!r} have different configs ({first.config} and "
                             f"{other.config}); only heads of one config (dropout aside) can be averaged.")
    averaged = build(host, first.config)
    with torch.no_grad():
        for key, tensor in own_state(host, averaged).items():
            tensor.copy_(sum(w * host.heads[head].state_dict()[key] for head, w in zip(names, weights, strict=True)))
    attach(host, name, averaged)
    if set_active:
        host.active_head = name


def averaged_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """What heads averaged together must share: every field set, dropout aside, and the labels."""
    return {**{key: value for key, value in config.items() if value and key not in ("dropout_prob", "label2id")},
            "labels": labels_of(config)}


def label2id(id2label: dict[int, str] | None, num_labels: int) -> dict[str, int] | None:
    """AdapterHub's head config keeps label2id; checked here, where id2label still shows every label."""
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} labels, num_labels is {num_labels}.")
    return None if id2label is None else {label: int(i) for i, label in id2label.items()}


def train(host: AdapterHost, name: str) -> None:
    """Unfreeze head ``name``'s own parameters; those it shares with the encoder (an LM decoder tied to the word
    embeddings) stay as the encoder has them."""
    for tensor in own_state(host, host.heads[name]).values():
        if isinstance(tensor, nn.Parameter):
            tensor.requires_grad_(True)


def own_state(host: AdapterHost, head: nn.Module) -> dict[str, Tensor]:
    """A head's tensors (attached or not) without those it shares with the encoder (an LM decoder tied to the word
    embeddings): what a head file holds."""
    shared = {id(p) for name, p in host.named_parameters(remove_duplicate=False) if not name.startswith("heads.")}
    return {key: t for key, t in head.state_dict(keep_vars=True).items() if id(t) not in shared}


__all__ = ["HEAD_TYPES", "MaskedLMPredictionHead", "MultipleChoiceHead", "PredictionHead", "head_config", "new_head"]
