"""CamemBERT (Martin et al., 2019, "CamemBERT: a Tasty French Language Model", https://arxiv.org/abs/1911.03894),
numerically equal to transformers' CamembertModel: RoBERTa's network and key names, trained on French with a
SentencePiece vocabulary. Only the model type and class names differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from peftcore.models.convert.tables import CAMEMBERT
from peftcore.models.roberta import RobertaConfig, RobertaModel


@dataclass(frozen=True, kw_only=True)
class CamembertConfig(RobertaConfig):
    """camembert-base defaults (RoBERTa's but the vocabulary); field names are those of transformers'
    CamembertConfig, whose own defaults are BERT's (transformers writes every one of these fields into config.json)."""

    model_type: ClassVar[str] = "camembert"
    vocab_size: int = 32005


class CamembertModel(RobertaModel):
    """CamemBERT encoder with optional pooler and task head (``config.head``): RoBERTa's."""

    config_class = CamembertConfig
    architecture = CAMEMBERT
