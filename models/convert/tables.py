"""Key tables and config translation for each architecture: one line per HF tensor, weight and bias both.

HF names verified against ``state_dict()`` of transformers 4.57.6's BertModel, BertFor*, RobertaModel and
RobertaFor* classes.
"""

from __future__ import annotations

from dataclasses import replace

from models.convert.keymap import KeyMap


def linear(hf: str, ours: str) -> dict[str, str]:
    """The weight and bias entries of one linear or LayerNorm."""
    return {f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"}


BERT = KeyMap(
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
            **dict.fromkeys(("cls.seq_relationship.weight", "cls.seq_relationship.bias")),  # BertForPreTraining's NSP
        },
        "sequence_classification": linear("classifier", "head.classifier"),
        "token_classification": linear("classifier", "head.classifier"),
        "question_answering": linear("qa_outputs", "head.qa_outputs"),
    },
    copies={"cls.predictions.decoder.bias": "cls.predictions.bias"},
)

ROBERTA = replace(
    BERT,  # same base keys under another prefix; RoBERTa's heads are its own
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
    },
    copies={"lm_head.decoder.bias": "lm_head.bias"},
)

# transformers class name -> (our head, whether that class builds the pooler); the first class of a head is the
# one a model gets when the user picks that head for a checkpoint of another
BERT_ARCHITECTURES = {
    "BertModel": (None, True),
    "BertForMaskedLM": ("masked_lm", False),
    "BertForPreTraining": ("masked_lm", True),
    "BertForSequenceClassification": ("sequence_classification", True),
    "BertForTokenClassification": ("token_classification", False),
    "BertForQuestionAnswering": ("question_answering", False),
}
ROBERTA_ARCHITECTURES = {
    "RobertaModel": (None, True),
    "RobertaForMaskedLM": ("masked_lm", False),
    "RobertaForSequenceClassification": ("sequence_classification", False),
    "RobertaForTokenClassification": ("token_classification", False),
    "RobertaForQuestionAnswering": ("question_answering", False),
}

# config.json fields that change the computation, and the only value we implement
BERT_REQUIRED_VALUES = {"position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False}

# config.json fields of transformers' generic PretrainedConfig that carry nothing for an encoder's forward
GENERIC_FIELDS = frozenset({
    "architectures", "model_type", "transformers_version", "_name_or_path", "name_or_path", "torch_dtype", "dtype",
    "use_cache", "gradient_checkpointing", "id2label", "label2id", "problem_type", "bos_token_id", "eos_token_id",
    "sep_token_id", "cls_token_id", "decoder_start_token_id", "output_past", "chunk_size_feed_forward",
    "output_hidden_states", "output_attentions", "return_dict", "torchscript", "pruned_heads", "tokenizer_class",
    "prefix", "task_specific_params", "finetuning_task", "_attn_implementation_autoset", "attn_implementation",
    "is_encoder_decoder", "tie_encoder_decoder", "cross_attention_hidden_size", "use_bfloat16", "tf_legacy_loss",
    "add_pooling_layer",
})
