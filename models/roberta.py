"""RoBERTa (Liu et al., 2019, https://arxiv.org/abs/1907.11692), numerically equal to transformers' RobertaModel.

BERT's network; positions count real tokens only and start after the padding index, so padding tokens
share the padding position (transformers' ``create_position_ids_from_input_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from peftcore.models.bert import BertModel
from peftcore.models.convert.tables import ROBERTA
from peftcore.models.layers import EncoderConfig, FirstTokenClassificationHead


@dataclass(frozen=True, kw_only=True)
class RobertaConfig(EncoderConfig):
    """roberta-base defaults; field names are those of transformers' RobertaConfig."""

    model_type: ClassVar[str] = "roberta"
    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1


class RobertaModel(BertModel):
    """RoBERTa encoder: BertModel with padding-offset positions and RoBERTa's own classification head."""

    config_class = RobertaConfig
    architecture = ROBERTA
    head_classes: ClassVar = {**BertModel.head_classes, "sequence_classification": FirstTokenClassificationHead}

    @property
    def max_length(self) -> int:
        return self.config.max_position_embeddings - self.config.pad_token_id - 1

    def default_position_ids(self, input_ids: Tensor | None, shape: tuple[int, int], device: torch.device) -> Tensor:
        pad = self.config.pad_token_id
        if input_ids is None:  # embeddings passed directly: no padding to see, count from pad + 1
            return torch.arange(pad + 1, shape[1] + pad + 1, device=device).expand(shape)
        is_token = input_ids.ne(pad).long()
        return torch.cumsum(is_token, dim=1) * is_token + pad  # (B, T)
