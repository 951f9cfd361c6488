"""XLM-RoBERTa (Conneau et al., 2019, "Unsupervised Cross-lingual Representation Learning at Scale",
https://arxiv.org/abs/1911.02116), numerically equal to transformers' XLMRobertaModel: RoBERTa's network and key
names, trained on 100 languages with a 250k-token vocabulary. Only the model type and class names differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftcore.models.convert.tables import XLM_ROBERTA
from peftcore.models.roberta import RobertaConfig, RobertaModel


@dataclass(frozen=True, kw_only=True)
class XLMRobertaConfig(RobertaConfig):
    """xlm-roberta-base defaults (RoBERTa's but the vocabulary); field names are those of transformers'
    XLMRobertaConfig, whose own defaults are BERT's (transformers writes every one of these fields into config.json)."""

    model_type: ClassVar[str] = "xlm-roberta"
    vocab_size: int = 250002


class XLMRobertaModel(RobertaModel):
    """XLM-RoBERTa encoder with optional pooler and task head (``config.head``): RoBERTa's."""

    config_class = XLMRobertaConfig
    architecture = XLM_ROBERTA
