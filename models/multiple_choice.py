"""transformers' multiple-choice task head of BERT and RoBERTa (``BertForMultipleChoice``, ``RobertaForMultipleChoice``
and the RoBERTa family's): each choice is encoded as a sequence of its own and scored from its pooled output."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from peftcore.models.dropout import Dropout
from peftcore.models.layers import EncoderConfig
from peftcore.sites import flatten_choices


class PooledChoiceHead(nn.Module):
    """Dropout and a linear layer scoring each choice's pooled output; the forward's (B, choices, T) inputs run through
    the encoder as (B·choices, T) and the scores come back as logits (B, choices). Any number of choices, as
    transformers'."""

    input_names = ("num_choices",)  # learned from the inputs' shape (encoder_inputs), read by forward
    input_layout = "choices"

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def encoder_inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any], dict[str, Any]]:
        args, kwargs, choices = flatten_choices(args, kwargs, None)
        return args, kwargs, {"num_choices": choices}

    def forward(self, x: Tensor, pooled: Tensor | None, num_choices: int) -> Tensor:
        if pooled is None:
            raise ValueError("this multiple-choice head reads the pooled output; build the model with "
                             "add_pooling_layer=True.")
        return self.classifier(self.dropout(pooled)).view(-1, num_choices)  # (B, choices)
