"""The ``Architecture`` record of ModernBERT (models/modernbert.py): its key table, transformers classes and config
renames. HF names verified against ``state_dict()`` of transformers 4.57's ModernBertModel and ModernBertFor{MaskedLM,
SequenceClassification, TokenClassification, QuestionAnswering} (tests/models/test_modernbert.py checks every one).

Kept beside tables.py, which holds the BERT-family, DeBERTa, ViT and DistilBERT records (ALBERT's: albert.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from peftcore.models.convert.architecture import Architecture
from peftcore.models.convert.keymap import KeyMap, Split
from peftcore.models.convert.tables import OUTER_SITES, linear


def split_wqkv(tensor: Tensor, config: Any) -> tuple[Tensor, ...]:
    """``Wqkv``'s weight (3 C, C) or bias (3 C,) -> q, k and v's: three contiguous thirds, since transformers views
    its output as (B, T, 3, H, D) (models/modernbert/modeling_modernbert.py, ``ModernBertAttention.forward``)."""
    return tuple(tensor.chunk(3, dim=0))


def join_wqkv(parts: tuple[Tensor, ...], config: Any) -> Tensor:
    """The inverse of ``split_wqkv``."""
    return torch.cat(parts, dim=0)  # (3 C, ...)


LAYER = "layers.{i}"
QKV = tuple(f"layers.{{i}}.attn.{m}" for m in ("q", "k", "v"))

# Biases and norm biases appear only where the config turns them on (attention_bias, mlp_bias, norm_bias,
# classifier_bias, decoder_bias); layer 0 has no attn_norm. ModernBERT has no token types and no pooler.
HEAD = {**linear("head.dense", "head.dense"), **linear("head.norm", "head.norm"),
        **linear("classifier", "head.classifier")}  # ModernBertPredictionHead, then the classifier

MODERNBERT = Architecture(
    keymap=KeyMap(
        prefix="model.",
        keys={
            "embeddings.tok_embeddings.weight": "embeddings.word.weight",
            **linear("embeddings.norm", "embeddings.norm"),
            **linear(f"{LAYER}.attn_norm", "layers.{i}.attn_norm"),
            f"{LAYER}.attn.Wqkv.weight": Split(tuple(f"{key}.weight" for key in QKV), split_wqkv, join_wqkv),
            f"{LAYER}.attn.Wqkv.bias": Split(tuple(f"{key}.bias" for key in QKV), split_wqkv, join_wqkv),
            **linear(f"{LAYER}.attn.Wo", "layers.{i}.attn.out"),
            **linear(f"{LAYER}.mlp_norm", "layers.{i}.ffn_norm"),
            **linear(f"{LAYER}.mlp.Wi", "layers.{i}.ffn.intermediate"),
            **linear(f"{LAYER}.mlp.Wo", "layers.{i}.ffn.output"),
            **linear("final_norm", "norm"),
        },
        heads={
            "masked_lm": {
                **linear("head.dense", "head.dense"),
                **linear("head.norm", "head.norm"),
                **linear("decoder", "head.decoder"),  # its weight tied to the token embeddings by default
            },
            "sequence_classification": HEAD,
            "token_classification": HEAD,
            "question_answering": HEAD,
        },
    ),
    hf_classes={
        "ModernBertModel": (None, False),
        "ModernBertForMaskedLM": ("masked_lm", False),
        "ModernBertForSequenceClassification": ("sequence_classification", False),
        "ModernBertForTokenClassification": ("token_classification", False),
        "ModernBertForQuestionAnswering": ("question_answering", False),
    },
    # AdapterHub 1.3.0 has no ModernBERT: only the linears PEFT adapts whole (q, k and v are one fused Wqkv, as in
    # DeBERTa v1) and the model-wide modules, named as AdapterHub names them in every model
    site_paths={
        **OUTER_SITES,
        "attn.out": f"{LAYER}.attn.Wo",
        "ffn.intermediate": f"{LAYER}.mlp.Wi",
        "ffn.output": f"{LAYER}.mlp.Wo",
    },
    config_renames={
        "norm_eps": "layer_norm_eps",
        "hidden_activation": "hidden_act",
        "embedding_dropout": "hidden_dropout_prob",
        "attention_dropout": "attention_probs_dropout_prob",
    },
    required_values={"rope_scaling": None},  # the default rope only
    # transformers' options for flash-attention runs and for sparse masked-LM logits in training (same loss), which
    # do not change the outputs we compute
    ignored_config_fields=frozenset({"deterministic_flash_attn", "sparse_prediction", "sparse_pred_ignore_index",
                                     "repad_logits_with_grad", "reference_compile"}),
)
