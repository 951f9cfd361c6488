"""One ``Architecture`` record per model — BERT, ROBERTA, XLM_ROBERTA, CAMEMBERT, ELECTRA, DEBERTA, DEBERTA_V2, VIT,
DISTILBERT, ALBERT — with its key table (one line per HF tensor, weight and bias both), transformers classes,
AdapterHub module paths, config.json renames and refused config values.

HF names verified against ``state_dict()`` of transformers 4.57.6's BertModel/BertFor*, RobertaModel/RobertaFor*,
XLMRobertaModel/XLMRobertaFor*, CamembertModel/CamembertFor*, ElectraModel/ElectraFor*, DebertaModel/DebertaFor*,
DebertaV2Model/DebertaV2For*, ViTModel, ViTForImageClassification, DistilBertModel/DistilBertFor* and
AlbertModel/AlbertFor* classes (tests/models/convert/test_tables.py checks every one).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from peftcore.models.convert.architecture import Architecture
from peftcore.models.convert.keymap import KeyMap, Split


def linear(hf: str, ours: str) -> dict[str, str]:
    """The weight and bias entries of one linear or LayerNorm."""
    return {f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"}


# where AdapterHub keeps invertible adapters and prompts, in every model
OUTER_SITES = {"embeddings": "invertible_adapters", "prompt": "prompt_tuning"}

# config.json fields of transformers' generic PretrainedConfig that carry nothing for an encoder's forward
GENERIC_FIELDS = frozenset({
    "architectures", "model_type", "transformers_version", "_name_or_path", "name_or_path", "torch_dtype", "dtype",
    "use_cache", "gradient_checkpointing", "id2label", "label2id", "problem_type",
    "sep_token_id", "cls_token_id", "decoder_start_token_id", "output_past", "chunk_size_feed_forward",
    "output_hidden_states", "output_attentions", "return_dict", "torchscript", "pruned_heads", "tokenizer_class",
    "prefix", "task_specific_params", "finetuning_task", "_attn_implementation_autoset", "attn_implementation",
    "is_encoder_decoder", "tie_encoder_decoder", "cross_attention_hidden_size", "use_bfloat16", "tf_legacy_loss",
    "add_pooling_layer",
    # generation settings, which transformers' config objects carry (to_dict) and an encoder never uses
    "bad_words_ids", "begin_suppress_tokens", "diversity_penalty", "do_sample", "early_stopping",
    "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty", "forced_bos_token_id", "forced_eos_token_id",
    "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "output_scores", "remove_invalid_values", "repetition_penalty", "return_dict_in_generate",
    "suppress_tokens", "temperature", "top_k", "top_p", "typical_p",
})


# ---- BERT and RoBERTa ----

BERT = Architecture(
    keymap=KeyMap(
        prefix="bert.",
        keys={
            "embeddings.word_embeddings.weight": "embeddings.word.weight",
            "embeddings.position_embeddings.weight": "embeddings.position.weight",
            "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
            **linear("embeddings.LayerNorm", "embeddings.norm"),
            "embeddings.position_ids": None,  # buffer in older files; we compute positions
            "embeddings.token_type_ids": None,  # buffer in older files; zeros by default
            **linear("encoder.layer.{i}.attention.self.query", "layers.{i}.attn.q"),
            **linear("encoder.layer.{i}.attention.self.key", "layers.{i}.attn.k"),
            **linear("encoder.layer.{i}.attention.self.value", "layers.{i}.attn.v"),
            **linear("encoder.layer.{i}.attention.output.dense", "layers.{i}.attn.out"),
            **linear("encoder.layer.{i}.attention.output.LayerNorm", "layers.{i}.attn.residual.norm"),
            **linear("encoder.layer.{i}.intermediate.dense", "layers.{i}.ffn.intermediate"),
            **linear("encoder.layer.{i}.output.dense", "layers.{i}.ffn.output"),
            **linear("encoder.layer.{i}.output.LayerNorm", "layers.{i}.ffn.residual.norm"),
            **linear("pooler.dense", "pooler.dense"),
        },
        heads={
            "masked_lm": {
                **linear("cls.predictions.transform.dense", "head.dense"),
                **linear("cls.predictions.transform.LayerNorm", "head.norm"),
                "cls.predictions.decoder.weight": "head.decoder.weight",  # tied to the word embeddings by default
                "cls.predictions.bias": "head.decoder.bias",
                # BertForPreTraining's next-sentence classifier: dropped
                **dict.fromkeys(("cls.seq_relationship.weight", "cls.seq_relationship.bias")),
            },
            "sequence_classification": linear("classifier", "head.classifier"),
            "multiple_choice": linear("classifier", "head.classifier"),
            "token_classification": linear("classifier", "head.classifier"),
            "question_answering": linear("qa_outputs", "head.qa_outputs"),
        },
        copies={"cls.predictions.decoder.bias": "cls.predictions.bias"},
    ),
    hf_classes={
        "BertModel": (None, True),
        "BertForMaskedLM": ("masked_lm", False),
        "BertForPreTraining": ("masked_lm", True),
        "BertForSequenceClassification": ("sequence_classification", True),
        "BertForTokenClassification": ("token_classification", False),
        "BertForQuestionAnswering": ("question_answering", False),
        "BertForMultipleChoice": ("multiple_choice", True),
    },
    site_paths={
        **OUTER_SITES,
        "attn.q": "encoder.layer.{i}.attention.self.query",
        "attn.k": "encoder.layer.{i}.attention.self.key",
        "attn.v": "encoder.layer.{i}.attention.self.value",
        "attn.prefix": "encoder.layer.{i}.attention.self.prefix_tuning",
        "attn.residual": "encoder.layer.{i}.attention.output",
        "ffn.intermediate": "encoder.layer.{i}.intermediate.dense",
        "ffn.output": "encoder.layer.{i}.output.dense",
        "ffn.residual": "encoder.layer.{i}.output",
        "output": "encoder.layer.{i}.reft_layer",
    },
    required_values={"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False},
)

ROBERTA = replace(
    BERT,  # BERT's base keys under another prefix, its module paths and refused values; RoBERTa's heads are its own
    keymap=replace(
        BERT.keymap,
        prefix="roberta.",
        heads={
            "masked_lm": {
                **linear("lm_head.dense", "head.dense"),
                **linear("lm_head.layer_norm", "head.norm"),
                "lm_head.decoder.weight": "head.decoder.weight",
                "lm_head.bias": "head.decoder.bias",
            },
            "sequence_classification": {
                **linear("classifier.dense", "head.dense"),
                **linear("classifier.out_proj", "head.out_proj"),
            },
            "token_classification": linear("classifier", "head.classifier"),
            "question_answering": linear("qa_outputs", "head.qa_outputs"),
            "multiple_choice": linear("classifier", "head.classifier"),
        },
        copies={"lm_head.decoder.bias": "lm_head.bias"},
    ),
    hf_classes={
        "RobertaModel": (None, True),
        "RobertaForMaskedLM": ("masked_lm", False),
        "RobertaForSequenceClassification": ("sequence_classification", False),
        "RobertaForTokenClassification": ("token_classification", False),
        "RobertaForQuestionAnswering": ("question_answering", False),
        "RobertaForMultipleChoice": ("multiple_choice", True),
    },
)

# XLM-RoBERTa and CamemBERT: RoBERTa's network, keys (under the same "roberta." prefix) and heads; their own classes
XLM_ROBERTA = replace(
    ROBERTA,
    hf_classes={
        "XLMRobertaModel": (None, True),
        "XLMRobertaForMaskedLM": ("masked_lm", False),
        "XLMRobertaForSequenceClassification": ("sequence_classification", False),
        "XLMRobertaForTokenClassification": ("token_classification", False),
        "XLMRobertaForQuestionAnswering": ("question_answering", False),
        "XLMRobertaForMultipleChoice": ("multiple_choice", True),
    },
)

CAMEMBERT = replace(
    ROBERTA,
    hf_classes={
        "CamembertModel": (None, True),
        "CamembertForMaskedLM": ("masked_lm", False),
        "CamembertForSequenceClassification": ("sequence_classification", False),
        "CamembertForTokenClassification": ("token_classification", False),
        "CamembertForQuestionAnswering": ("question_answering", False),
        "CamembertForMultipleChoice": ("multiple_choice", True),
    },
)


# ---- ELECTRA ----

ELECTRA = replace(
    BERT,  # BERT's encoder keys, module paths and refused values; no pooler, a projection, heads of its own
    keymap=KeyMap(
        prefix="electra.",
        keys={
            **{hf: ours for hf, ours in BERT.keymap.keys.items() if not hf.startswith("pooler.")},
            **linear("embeddings_project", "embeddings.proj"),  # only when embedding_size != hidden_size
            # ElectraForPreTraining's replaced-token detector, which we do not implement: dropped
            **dict.fromkeys((
                "discriminator_predictions.dense.weight", "discriminator_predictions.dense.bias",
                "discriminator_predictions.dense_prediction.weight", "discriminator_predictions.dense_prediction.bias",
            )),
        },
        heads={
            "masked_lm": {  # ElectraForMaskedLM's generator head, embedding_size wide
                **linear("generator_predictions.dense", "head.dense"),
                **linear("generator_predictions.LayerNorm", "head.norm"),
                **linear("generator_lm_head", "head.decoder"),  # its weight tied to the word embeddings by default
            },
            "sequence_classification": ROBERTA.keymap.heads["sequence_classification"],  # classifier.dense, out_proj
            "token_classification": linear("classifier", "head.classifier"),
            "question_answering": linear("qa_outputs", "head.qa_outputs"),
        },
    ),
    hf_classes={
        "ElectraModel": (None, False),
        "ElectraForPreTraining": (None, False),  # the discriminator checkpoints: their encoder, without its head
        "ElectraForMaskedLM": ("masked_lm", False),
        "ElectraForSequenceClassification": ("sequence_classification", False),
        "ElectraForTokenClassification": ("token_classification", False),
        "ElectraForQuestionAnswering": ("question_answering", False),
    },
)


# ---- DeBERTa v1 and v2/v3 ----

def split_in_proj(weight: Tensor, config: Any) -> tuple[Tensor, Tensor, Tensor]:
    """DeBERTa v1's fused ``in_proj.weight`` (3 H D, C) -> the q, k and v weights, (H D, C) each.

    Mirrors transformers 4.57.6 models/deberta/modeling_deberta.py:245,
    ``self.transpose_for_scores(qp).chunk(3, dim=-1)``: the output is viewed as (B, T, H, 3 D) and each head's
    3 D features are chunked into q, k, v. The rows are therefore interleaved per head (q, k, v of head 0, then
    of head 1, ...), not three contiguous thirds.
    """
    q, k, v = weight.unflatten(0, (config.num_attention_heads, 3, -1)).unbind(1)  # 3 × (H, D, C)
    return q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)  # 3 × (H D, C)


def join_in_proj(parts: tuple[Tensor, ...], config: Any) -> Tensor:
    """The inverse of ``split_in_proj``: q, k, v weights (H D, C) -> the fused per-head interleaved (3 H D, C)."""
    heads = [part.unflatten(0, (config.num_attention_heads, -1)) for part in parts]  # 3 × (H, D, C)
    return torch.stack(heads, dim=1).flatten(0, 2)  # (H 3 D, C)


LAYER = "encoder.layer.{i}"
SHARED = {  # every key v1 and v2 name alike
    "embeddings.word_embeddings.weight": "embeddings.word.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.weight",  # absent when position_biased_input=False
    "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",  # absent when type_vocab_size=0
    "embeddings.embed_proj.weight": "embeddings.proj.weight",  # only when embedding_size != hidden_size
    **linear("embeddings.LayerNorm", "embeddings.norm"),
    "embeddings.position_ids": None,  # buffer in older files; we compute positions
    "encoder.rel_embeddings.weight": "rel_embeddings.weight",  # only with relative_attention
    **linear(f"{LAYER}.attention.output.dense", "layers.{i}.attn.out"),
    **linear(f"{LAYER}.attention.output.LayerNorm", "layers.{i}.attn.residual.norm"),
    **linear(f"{LAYER}.intermediate.dense", "layers.{i}.ffn.intermediate"),
    **linear(f"{LAYER}.output.dense", "layers.{i}.ffn.output"),
    **linear(f"{LAYER}.output.LayerNorm", "layers.{i}.ffn.residual.norm"),
    **dict.fromkeys((  # the legacy=False masked-LM head, which we do not implement (the config refuses it): dropped
        "lm_predictions.lm_head.dense.weight", "lm_predictions.lm_head.dense.bias",
        "lm_predictions.lm_head.LayerNorm.weight", "lm_predictions.lm_head.LayerNorm.bias",
        "lm_predictions.lm_head.bias",
    )),
}

HEADS = {  # DebertaFor* and DebertaV2For* save the same head keys
    "masked_lm": {  # the legacy=True head, the one transformers builds by default
        **linear("cls.predictions.transform.dense", "head.dense"),
        **linear("cls.predictions.transform.LayerNorm", "head.norm"),
        "cls.predictions.decoder.weight": "head.decoder.weight",  # tied to the word embeddings
        "cls.predictions.bias": "head.decoder.bias",
    },
    "sequence_classification": {
        **linear("pooler.dense", "head.dense"),  # transformers' ContextPooler, outside the base model
        **linear("classifier", "head.classifier"),
    },
    "token_classification": linear("classifier", "head.classifier"),
    "question_answering": linear("qa_outputs", "head.qa_outputs"),
}

# where AdapterHub attaches method modules in both DeBERTa versions (verified against adapters 1.3.0 state_dict keys);
# v1's q, k and v are one fused in_proj, which no single site of ours corresponds to
DEBERTA_SITE_PATHS = {
    **OUTER_SITES,
    "attn.prefix": f"{LAYER}.attention.self.prefix_tuning",
    "attn.residual": f"{LAYER}.attention.output",
    "ffn.intermediate": f"{LAYER}.intermediate.dense",
    "ffn.output": f"{LAYER}.output.dense",
    "ffn.residual": f"{LAYER}.output",
    "output": f"{LAYER}.reft_layer",
}

# DeBERTa's base models have no pooler. Every field transformers reads for DeBERTa is a config field of ours,
# validated there (unsupported values raise a ValueError naming it): no refused values.
DEBERTA = Architecture(
    keymap=KeyMap(
        prefix="deberta.",
        keys={
            **SHARED,
            f"{LAYER}.attention.self.in_proj.weight": Split(
                ("layers.{i}.attn.q.weight", "layers.{i}.attn.k.weight", "layers.{i}.attn.v.weight"),
                split_in_proj, join_in_proj),
            f"{LAYER}.attention.self.q_bias": "layers.{i}.attn.q.bias",
            f"{LAYER}.attention.self.v_bias": "layers.{i}.attn.v.bias",  # k has no bias in v1
            f"{LAYER}.attention.self.pos_proj.weight": "layers.{i}.attn.pos_k.weight",  # c2p, no bias
            **linear(f"{LAYER}.attention.self.pos_q_proj", "layers.{i}.attn.pos_q"),  # p2c
            f"{LAYER}.attention.self.head_logits_proj.weight": "layers.{i}.attn.head_logits.weight",  # talking_head
            f"{LAYER}.attention.self.head_weights_proj.weight": "layers.{i}.attn.head_weights.weight",
        },
        heads=HEADS,
        copies={"cls.predictions.decoder.bias": "cls.predictions.bias"},
    ),
    hf_classes={
        "DebertaModel": (None, False),
        "DebertaForMaskedLM": ("masked_lm", False),
        "DebertaForSequenceClassification": ("sequence_classification", False),
        "DebertaForTokenClassification": ("token_classification", False),
        "DebertaForQuestionAnswering": ("question_answering", False),
    },
    site_paths=DEBERTA_SITE_PATHS,
)

DEBERTA_V2 = Architecture(
    keymap=KeyMap(
        prefix="deberta.",
        keys={
            **SHARED,
            **linear(f"{LAYER}.attention.self.query_proj", "layers.{i}.attn.q"),
            **linear(f"{LAYER}.attention.self.key_proj", "layers.{i}.attn.k"),
            **linear(f"{LAYER}.attention.self.value_proj", "layers.{i}.attn.v"),
            **linear(f"{LAYER}.attention.self.pos_key_proj", "layers.{i}.attn.pos_k"),  # c2p, unless share_att_key
            **linear(f"{LAYER}.attention.self.pos_query_proj", "layers.{i}.attn.pos_q"),  # p2c, unless share_att_key
            **linear("encoder.LayerNorm", "rel_norm"),  # norm_rel_ebd="layer_norm"
            **linear("encoder.conv.conv", "conv.conv"),  # conv_kernel_size > 0
            **linear("encoder.conv.LayerNorm", "conv.norm"),
        },
        heads=HEADS,
        copies={"cls.predictions.decoder.bias": "cls.predictions.bias"},
    ),
    hf_classes={
        "DebertaV2Model": (None, False),
        "DebertaV2ForMaskedLM": ("masked_lm", False),
        "DebertaV2ForSequenceClassification": ("sequence_classification", False),
        "DebertaV2ForTokenClassification": ("token_classification", False),
        "DebertaV2ForQuestionAnswering": ("question_answering", False),
    },
    site_paths={
        "attn.q": f"{LAYER}.attention.self.query_proj",
        "attn.k": f"{LAYER}.attention.self.key_proj",
        "attn.v": f"{LAYER}.attention.self.value_proj",
        **DEBERTA_SITE_PATHS,
    },
)


# ---- ViT ----

VIT = Architecture(
    keymap=KeyMap(
        prefix="vit.",
        keys={
            "embeddings.cls_token": "embeddings.cls",
            "embeddings.position_embeddings": "embeddings.position",
            **linear("embeddings.patch_embeddings.projection", "embeddings.patch"),
            **linear("encoder.layer.{i}.layernorm_before", "layers.{i}.attn_norm"),
            **linear("encoder.layer.{i}.attention.attention.query", "layers.{i}.attn.q"),
            **linear("encoder.layer.{i}.attention.attention.key", "layers.{i}.attn.k"),
            **linear("encoder.layer.{i}.attention.attention.value", "layers.{i}.attn.v"),
            **linear("encoder.layer.{i}.attention.output.dense", "layers.{i}.attn.out"),
            **linear("encoder.layer.{i}.layernorm_after", "layers.{i}.ffn_norm"),
            **linear("encoder.layer.{i}.intermediate.dense", "layers.{i}.ffn.intermediate"),
            **linear("encoder.layer.{i}.output.dense", "layers.{i}.ffn.output"),
            **linear("layernorm", "norm"),
            **linear("pooler.dense", "pooler.dense"),
        },
        heads={"image_classification": linear("classifier", "head.classifier")},
    ),
    hf_classes={
        "ViTModel": (None, True),
        "ViTForImageClassification": ("image_classification", False),
    },
    site_paths={  # AdapterHub's ViT keeps its bottlenecks in extra modules around the pre-LN residuals
        **OUTER_SITES,
        "attn.q": "encoder.layer.{i}.attention.attention.query",
        "attn.k": "encoder.layer.{i}.attention.attention.key",
        "attn.v": "encoder.layer.{i}.attention.attention.value",
        "attn.prefix": "encoder.layer.{i}.attention.attention.prefix_tuning",
        "attn.residual": "encoder.layer.{i}.attention_adapters",
        "ffn.intermediate": "encoder.layer.{i}.intermediate.dense",
        "ffn.output": "encoder.layer.{i}.output.dense",
        "ffn.residual": "encoder.layer.{i}.output.output_adapters",
        "output": "encoder.layer.{i}.reft_layer",
    },
    required_values={"pooler_act": "tanh"},
)


# ---- DistilBERT ----

DISTILBERT_LAYER = "transformer.layer.{i}"

# DistilBERT has no token types and no pooler; config.json names its sizes otherwise (config_renames)
DISTILBERT = Architecture(
    keymap=KeyMap(
        prefix="distilbert.",
        keys={
            "embeddings.word_embeddings.weight": "embeddings.word.weight",
            "embeddings.position_embeddings.weight": "embeddings.position.weight",  # sinusoidal ones are saved too
            **linear("embeddings.LayerNorm", "embeddings.norm"),
            "embeddings.position_ids": None,  # buffer in older files; we compute positions
            **linear(f"{DISTILBERT_LAYER}.attention.q_lin", "layers.{i}.attn.q"),
            **linear(f"{DISTILBERT_LAYER}.attention.k_lin", "layers.{i}.attn.k"),
            **linear(f"{DISTILBERT_LAYER}.attention.v_lin", "layers.{i}.attn.v"),
            **linear(f"{DISTILBERT_LAYER}.attention.out_lin", "layers.{i}.attn.out"),
            **linear(f"{DISTILBERT_LAYER}.sa_layer_norm", "layers.{i}.attn.residual.norm"),
            **linear(f"{DISTILBERT_LAYER}.ffn.lin1", "layers.{i}.ffn.intermediate"),
            **linear(f"{DISTILBERT_LAYER}.ffn.lin2", "layers.{i}.ffn.output"),
            **linear(f"{DISTILBERT_LAYER}.output_layer_norm", "layers.{i}.ffn.residual.norm"),
        },
        heads={
            "masked_lm": {
                **linear("vocab_transform", "head.dense"),
                **linear("vocab_layer_norm", "head.norm"),
                **linear("vocab_projector", "head.decoder"),  # its weight tied to the word embeddings by default
            },
            "sequence_classification": {
                **linear("pre_classifier", "head.pre_classifier"),
                **linear("classifier", "head.classifier"),
            },
            "token_classification": linear("classifier", "head.classifier"),
            "question_answering": linear("qa_outputs", "head.qa_outputs"),
        },
    ),
    hf_classes={
        "DistilBertModel": (None, False),
        "DistilBertForMaskedLM": ("masked_lm", False),
        "DistilBertForSequenceClassification": ("sequence_classification", False),
        "DistilBertForTokenClassification": ("token_classification", False),
        "DistilBertForQuestionAnswering": ("question_answering", False),
    },
    site_paths={  # verified against adapters 1.3.0's DistilBertAdapterModel state_dict keys
        **OUTER_SITES,
        "attn.q": f"{DISTILBERT_LAYER}.attention.q_lin",
        "attn.k": f"{DISTILBERT_LAYER}.attention.k_lin",
        "attn.v": f"{DISTILBERT_LAYER}.attention.v_lin",
        "attn.prefix": f"{DISTILBERT_LAYER}.attention.prefix_tuning",
        "attn.residual": f"{DISTILBERT_LAYER}.attention_adapters",
        "ffn.intermediate": f"{DISTILBERT_LAYER}.ffn.lin1",
        "ffn.output": f"{DISTILBERT_LAYER}.ffn.lin2",
        "ffn.residual": f"{DISTILBERT_LAYER}.output_adapters",
        "output": f"{DISTILBERT_LAYER}.reft_layer",
    },
    shared_paths={"prefix": "prefix_tuning.prefix_tunings.{name}.self"},  # its prefix layer's location is "self"
    config_renames={
        "dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "hidden_dim": "intermediate_size",
        "activation": "hidden_act",
        "dropout": "hidden_dropout_prob",
        "attention_dropout": "attention_probs_dropout_prob",
        "seq_classif_dropout": "classifier_dropout",  # as AdapterHub renames them (adapters/wrappers/configuration.py)
    },
    ignored_config_fields=frozenset({"tie_weights_"}),  # in distilbert-base-*'s config.json; transformers ignores it
)
