"""BERT (Devlin et al., 2018, https://arxiv.org/abs/1810.04805), numerically equal to transformers' BertModel.

Post-LN encoder over word + position + token-type embeddings; the blocks and their sites are in layers.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from peftcore.models.convert.tables import BERT
from peftcore.models.layers import (
    Embeddings,
    EncoderConfig,
    EncoderLayer,
    EncoderOutput,
    Padding,
    PooledClassificationHead,
    Pooler,
    QuestionAnsweringHead,
    TokenClassificationHead,
    additive_mask,
    masked_lm_head,
    prompt_site,
)
from peftcore.models.multiple_choice import PooledChoiceHead
from peftcore.models.pretrained import PretrainedEncoder


@dataclass(frozen=True, kw_only=True)
class BertConfig(EncoderConfig):
    """bert-base defaults; field names are those of transformers' BertConfig."""

    model_type: ClassVar[str] = "bert"
    vocab_size: int = 30522


class BertModel(PretrainedEncoder):
    """BERT encoder with optional pooler and task head (``config.head``)."""

    config_class = BertConfig
    architecture = BERT
    head_classes: ClassVar = {
        "masked_lm": masked_lm_head,
        "sequence_classification": PooledClassificationHead,
        "token_classification": TokenClassificationHead,
        "question_answering": QuestionAnsweringHead,
        "multiple_choice": PooledChoiceHead,
    }

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.embeddings = self.build_embeddings(config)  # ends in site embeddings
        self.prompt = prompt_site(self.embeddings, self.embed_text)  # site prompt
        self.layers = nn.ModuleList(self.build_layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = Pooler(config.hidden_size) if config.add_pooling_layer else None
        self.head = self.build_head()
        self.apply(self.init_weights)

    def build_embeddings(self, config: BertConfig) -> nn.Module:
        return Embeddings(config)

    def build_layer(self, config: BertConfig) -> nn.Module:
        """BERT's post-LN layer; a model of BERT's inputs and heads with other layers overrides this."""
        return EncoderLayer(config)

    @property
    def max_length(self) -> int:
        """The longest sequence the position table covers."""
        return self.config.max_position_embeddings

    def default_position_ids(self, input_ids: Tensor | None, shape: tuple[int, int], device: torch.device) -> Tensor:
        return torch.arange(shape[1], device=device).expand(shape)  # (B, T)

    def encode(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """input_ids (B, T) -> EncoderOutput; attention_mask is 1 for real tokens and 0 for padding.

        A padded batch runs unpadded (see ``Padding``) unless ``unpad`` is off or the adapter setup mixes tokens;
        padded positions of the outputs are then zeros.
        """
        shape = self.check_ids(input_ids, inputs_embeds, attention_mask, token_type_ids, self.max_length,
                                     position_ids)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if token_type_ids is None:
            token_type_ids = torch.zeros(shape, dtype=torch.long, device=device)
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids, shape, device)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, C)
        x, attention_mask, positions = self.prompt(x, attention_mask)  # site prompt: (B, P+T, C) when active
        padding = Padding.of(attention_mask, additive_mask(attention_mask, x.dtype), self.unpadded())
        return self.run_layers(x, padding, output_hidden_states, output_attentions, positions)
