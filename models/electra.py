"""ELECTRA (Clark et al., 2020, "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators",
https://arxiv.org/abs/2003.10555), numerically equal to transformers' ElectraModel: BERT's post-LN layers over
embeddings ``embedding_size`` wide, projected up to ``hidden_size`` where the two differ (``embeddings_project``,
layers.Embeddings' ``proj``), and no pooler.

Heads as transformers' ElectraFor* build them: the generator's masked-LM head (``generator_predictions`` +
``generator_lm_head``, onto the embedding width), RoBERTa's first-token classifier with gelu for tanh, and BERT's
token-classification and question-answering heads. ElectraForPreTraining's replaced-token detector is not implemented:
a discriminator checkpoint loads as the bare encoder, its detector dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

from peftcore.models.bert import BertModel
from peftcore.models.convert.tables import ELECTRA
from peftcore.models.layers import (
    EncoderConfig,
    FirstTokenClassificationHead,
    QuestionAnsweringHead,
    TokenClassificationHead,
    check_positive,
)
from peftcore.sites import MaskedLMHead


@dataclass(frozen=True, kw_only=True)
class ElectraConfig(EncoderConfig):
    """electra-small-discriminator's shapes, which are transformers' ElectraConfig defaults, under its field names.

    The ``summary_*`` fields configure transformers' multiple-choice head, which we do not build; they are kept so
    that config.json reads without warnings and exports unchanged.
    """

    model_type: ClassVar[str] = "electra"
    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    add_pooling_layer: bool = False
    summary_type: str = "first"
    summary_use_proj: bool = True
    summary_activation: str | None = "gelu"
    summary_last_dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, embedding_size=self.embedding_size)
        if self.add_pooling_layer:
            raise ValueError("ElectraConfig.add_pooling_layer=True: ELECTRA has no pooler; a sequence classifier "
                             "reads the first token (head='sequence_classification').")

    @property
    def embedding_width(self) -> int:
        return self.embedding_size


def generator_head(config: ElectraConfig) -> MaskedLMHead:
    """ElectraForMaskedLM's head: dense onto the embedding width -> gelu -> LayerNorm -> decoder, tied to the word
    embeddings when the config says so. gelu whatever hidden_act is (transformers' ElectraGeneratorPredictions)."""
    return MaskedLMHead(config.hidden_size, config.embedding_width, config.vocab_size, "gelu", config.layer_norm_eps)


class ElectraModel(BertModel):
    """ELECTRA encoder (the discriminator's, or a generator's) with an optional task head (``config.head``)."""

    config_class = ElectraConfig
    architecture = ELECTRA
    head_classes: ClassVar = {
        "masked_lm": generator_head,
        # transformers' ElectraClassificationHead: RoBERTa's with gelu for tanh ("it seems Electra authors used gelu")
        "sequence_classification": partial(FirstTokenClassificationHead, activation="gelu"),
        "token_classification": TokenClassificationHead,
        "question_answering": QuestionAnsweringHead,
    }
