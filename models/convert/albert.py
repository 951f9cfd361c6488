"""The ``Architecture`` record of ALBERT (models/albert.py): its key table, with the layer numbering of its shared
layer groups, transformers classes and AdapterHub site paths. Kept beside tables.py, which holds the BERT-family,
DeBERTa, ViT and DistilBERT records.
"""

from __future__ import annotations

from typing import Any

from peftcore.models.convert.architecture import Architecture
from peftcore.models.convert.keymap import ConversionError, KeyMap, LayerNumbering
from peftcore.models.convert.tables import OUTER_SITES, linear


def albert_layer_to_hf(layer: int, config: Any) -> tuple[int, int]:
    """Our layer -> (group, layer in group): ``albert_layer_groups.{i}.albert_layers.{j}`` holds our layer
    ``i · inner_group_num + j``, as transformers' ``AlbertModel._prune_heads`` flattens them."""
    return divmod(layer, config.inner_group_num)


def albert_layer_to_ours(indices: tuple[int, ...], config: Any) -> int:
    group, inner = indices
    if inner >= config.inner_group_num:  # it would land on the next group's layer
        raise ConversionError(f"the checkpoint has albert_layers.{inner} in a group, but its config has "
                              f"inner_group_num={config.inner_group_num}; check that config.json fits the weights.")
    return group * config.inner_group_num + inner


ALBERT_LAYER = "encoder.albert_layer_groups.{i}.albert_layers.{j}"  # one of our layers: see albert_layer_to_hf

# Every key of a layer is stored once: ALBERT's layers are shared across the layer applications, and so are ours
# (models/albert.py). AlbertForPreTraining's sentence-order head is not implemented: its keys are dropped.
ALBERT = Architecture(
    keymap=KeyMap(
        prefix="albert.",
        keys={
            "embeddings.word_embeddings.weight": "embeddings.word.weight",
            "embeddings.position_embeddings.weight": "embeddings.position.weight",
            "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
            **linear("embeddings.LayerNorm", "embeddings.norm"),
            "embeddings.position_ids": None,  # buffers in older files; we compute positions, token types are 0
            "embeddings.token_type_ids": None,
            **linear("encoder.embedding_hidden_mapping_in", "embeddings.proj"),  # embedding_size -> hidden_size
            **linear(f"{ALBERT_LAYER}.attention.query", "layers.{i}.attn.q"),
            **linear(f"{ALBERT_LAYER}.attention.key", "layers.{i}.attn.k"),
            **linear(f"{ALBERT_LAYER}.attention.value", "layers.{i}.attn.v"),
            **linear(f"{ALBERT_LAYER}.attention.dense", "layers.{i}.attn.out"),
            **linear(f"{ALBERT_LAYER}.attention.LayerNorm", "layers.{i}.attn.residual.norm"),
            **linear(f"{ALBERT_LAYER}.ffn", "layers.{i}.ffn.intermediate"),
            **linear(f"{ALBERT_LAYER}.ffn_output", "layers.{i}.ffn.output"),
            **linear(f"{ALBERT_LAYER}.full_layer_layer_norm", "layers.{i}.ffn.residual.norm"),
            **linear("pooler", "pooler.dense"),
        },
        heads={
            "masked_lm": {  # embedding_size wide: dense hidden_size -> embedding_size, decoder from embedding_size
                **linear("predictions.dense", "head.dense"),
                **linear("predictions.LayerNorm", "head.norm"),
                "predictions.decoder.weight": "head.decoder.weight",  # tied to the word embeddings by default
                "predictions.bias": "head.decoder.bias",
                **dict.fromkeys(("sop_classifier.classifier.weight", "sop_classifier.classifier.bias")),
            },
            "sequence_classification": linear("classifier", "head.classifier"),
            "token_classification": linear("classifier", "head.classifier"),
            "question_answering": linear("qa_outputs", "head.qa_outputs"),
        },
        copies={"predictions.decoder.bias": "predictions.bias"},
        numbering=LayerNumbering(albert_layer_to_hf, albert_layer_to_ours),
    ),
    hf_classes={
        "AlbertModel": (None, True),
        "AlbertForMaskedLM": ("masked_lm", False),
        "AlbertForPreTraining": ("masked_lm", True),
        "AlbertForSequenceClassification": ("sequence_classification", True),
        "AlbertForTokenClassification": ("token_classification", False),
        "AlbertForQuestionAnswering": ("question_answering", False),
    },
    site_paths={  # verified against adapters 1.3.0's AlbertAdapterModel state_dict keys
        **OUTER_SITES,
        "attn.q": f"{ALBERT_LAYER}.attention.query",
        "attn.k": f"{ALBERT_LAYER}.attention.key",
        "attn.v": f"{ALBERT_LAYER}.attention.value",
        "attn.prefix": f"{ALBERT_LAYER}.attention.prefix_tuning",
        "attn.residual": f"{ALBERT_LAYER}.attention.attention_adapters",
        "ffn.intermediate": f"{ALBERT_LAYER}.ffn",
        "ffn.output": f"{ALBERT_LAYER}.ffn_output",
        "ffn.residual": f"{ALBERT_LAYER}.output_adapters",
        "output": f"{ALBERT_LAYER}.reft_layer",
    },
    config_renames={"classifier_dropout_prob": "classifier_dropout"},  # ours: EncoderConfig's classifier_dropout
    required_values={"position_embedding_type": "absolute"},
    # in the released albert-*-v1/v2 config.json files, from Google's original configs; transformers never reads them
    ignored_config_fields=frozenset({"down_scale_factor", "gap_size", "net_structure_type", "num_memory_blocks",
                                     "layers_to_keep"}),
)
