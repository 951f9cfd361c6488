"""DistilBERT (Sanh et al., 2019, https://arxiv.org/abs/1910.01108), numerically equal to transformers'
DistilBertModel: BERT's post-LN layers, six of them by default, over word + position embeddings — no token types, no
pooler; its sequence classifier reads the first token through a ReLU layer of its own.

transformers' config.json names DistilBERT's sizes otherwise (``dim``, ``n_layers``, ``n_heads``, ``hidden_dim``,
``activation``, ``dropout``, ``attention_dropout``, and ``seq_classif_dropout`` for the classifier's dropout); the
record's ``config_renames`` (tables.py) translate them both ways, so ``DistilBertConfig`` keeps the field names every
other config has — those AdapterHub gives DistilBERT's config too (its wrappers/configuration.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.models.convert.tables import DISTILBERT
from peftcore.models.dropout import Dropout
from peftcore.models.layers import (
    EncoderConfig,
    EncoderLayer,
    EncoderOutput,
    Padding,
    QuestionAnsweringHead,
    TokenClassificationHead,
    additive_mask,
    masked_lm_head,
    prompt_site,
)
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.sites import EmbeddingSite

LAYER_NORM_EPS = 1e-12  # transformers' DistilBERT fixes every LayerNorm's eps; its config has no field for it


@dataclass(frozen=True, kw_only=True)
class DistilBertConfig(EncoderConfig):
    """distilbert-base defaults, which are transformers' DistilBertConfig's, under the names of EncoderConfig.

    ``sinusoidal_pos_embds`` starts the position table as fixed sinusoids (frozen, as transformers freezes it);
    ``classifier_dropout`` (config.json's ``seq_classif_dropout``) and ``qa_dropout`` are the dropouts of the
    sequence-classification and QA heads; the token classifier's is ``hidden_dropout_prob``, as in transformers.
    """

    model_type: ClassVar[str] = "distilbert"
    vocab_size: int = 30522
    num_hidden_layers: int = 6
    type_vocab_size: int = 0
    add_pooling_layer: bool = False
    sinusoidal_pos_embds: bool = False
    qa_dropout: float = 0.1
    classifier_dropout: float | None = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.type_vocab_size != 0:
            raise ValueError(f"{name}.type_vocab_size={self.type_vocab_size}: DistilBERT has no token-type embeddings; "
                             "leave it at 0.")
        if self.add_pooling_layer:
            raise ValueError(f"{name}.add_pooling_layer=True: DistilBERT has no pooler (its classifier reads the first "
                             "token); leave it False.")
        if self.layer_norm_eps != LAYER_NORM_EPS:
            raise ValueError(f"{name}.layer_norm_eps={self.layer_norm_eps}: transformers' DistilBERT fixes it at "
                             f"{LAYER_NORM_EPS}, so no checkpoint holds another value.")
        if not 0.0 <= self.qa_dropout < 1.0:
            raise ValueError(f"{name}.qa_dropout must lie in [0, 1), got {self.qa_dropout!r}.")


def sinusoidal_positions(positions: int, width: int) -> Tensor:
    """The fixed position table (positions, width): sin(p / 10000^(2⌊j/2⌋ / width)) at even features j, cos at odd
    ones (transformers 4.57.6 models/distilbert/modeling_distilbert.py:77, computed in float64 as there)."""
    p = torch.arange(positions, dtype=torch.float64)[:, None]  # (positions, 1)
    j = torch.arange(width, dtype=torch.float64)
    angles = p / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / width)  # (positions, width)
    table = torch.empty(positions, width, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return table.float()


class DistilBertEmbeddings(nn.Module):
    """word + position embeddings (no token types), LayerNorm, dropout."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, C)
        if config.sinusoidal_pos_embds:
            self.position.weight.requires_grad_(False)  # fixed sinusoids, as transformers keeps them
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.site = EmbeddingSite()  # site embeddings

    def forward(self, input_ids: Tensor | None, position_ids: Tensor, inputs_embeds: Tensor | None = None) -> Tensor:
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        return self.site(self.dropout(self.norm(x + self.position(position_ids))))


class DistilBertLayer(EncoderLayer):
    """BERT's post-LN layer without dropout on the attention output: DistilBERT drops out inside attention and after
    the feed-forward only (transformers' TransformerBlock and FFN)."""

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        h, probs = self.attn(x, padding, output_attentions)
        x = self.attn.residual(h, x)  # site attn.residual
        x = self.ffn.residual(self.dropout(self.ffn(x)), x)  # site ffn.residual
        return self.output(x, padding), probs  # site output


class DistilBertClassificationHead(nn.Module):
    """DistilBERT's sequence classifier on the first token: pre_classifier -> ReLU -> dropout -> classifier."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        self.pre_classifier = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return self.classifier(self.dropout(F.relu(self.pre_classifier(x[:, 0]))))  # (B, L)


class DistilBertTokenClassificationHead(TokenClassificationHead):
    """BERT's token classifier with DistilBERT's dropout, ``hidden_dropout_prob`` (config.json's ``dropout``)."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.dropout = Dropout(config.hidden_dropout_prob)


class DistilBertQuestionAnsweringHead(QuestionAnsweringHead):
    """BERT's span head with DistilBERT's dropout (``qa_dropout``) on the hidden states before it."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.dropout = Dropout(config.qa_dropout)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return self.qa_outputs(self.dropout(x))  # (B, T, 2)


class DistilBertModel(PretrainedEncoder):
    """DistilBERT encoder with optional task head (``config.head``); DistilBERT has no pooler."""

    config_class = DistilBertConfig
    architecture = DISTILBERT
    head_classes: ClassVar = {
        "masked_lm": masked_lm_head,  # vocab_transform -> activation -> vocab_layer_norm -> vocab_projector
        "sequence_classification": DistilBertClassificationHead,
        "token_classification": DistilBertTokenClassificationHead,
        "question_answering": DistilBertQuestionAnsweringHead,
    }

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.embeddings = DistilBertEmbeddings(config)  # ends in site embeddings
        self.prompt = prompt_site(self.embeddings, self.embed_text)  # site prompt
        self.layers = nn.ModuleList(DistilBertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = None
        self.head = self.build_head()
        self.apply(self.init_weights)

    def init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation; sinusoidal positions when the config asks for them."""
        super().init_weights(module)
        if isinstance(module, DistilBertEmbeddings) and self.config.sinusoidal_pos_embds:
            with torch.no_grad():
                module.position.weight.copy_(sinusoidal_positions(*module.position.weight.shape))

    @property
    def max_length(self) -> int:
        """The longest sequence the position table covers."""
        return self.config.max_position_embeddings

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

        DistilBERT has no token types: ``token_type_ids`` (our Tokenizer returns them) are accepted and ignored, as
        the [SEP] token alone separates a pair. A padded batch runs unpadded, as in BertModel.encode.
        """
        shape = self.check_ids(input_ids, inputs_embeds, attention_mask, token_type_ids, self.max_length)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        if position_ids is None:
            position_ids = torch.arange(shape[1], device=device).expand(shape)  # (B, T)
        x = self.embeddings(input_ids, position_ids, inputs_embeds)  # (B, T, C)
        x, attention_mask, positions = self.prompt(x, attention_mask)  # site prompt: (B, P+T, C) when active
        padding = Padding.of(attention_mask, additive_mask(attention_mask, x.dtype), self.unpadded())
        return self.run_layers(x, padding, output_hidden_states, output_attentions, positions)
