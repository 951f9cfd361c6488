"""DeBERTa v2 and v3 (He et al., 2020, https://arxiv.org/abs/2006.03654; DeBERTaV3, He et al., 2021,
https://arxiv.org/abs/2111.09543), numerically equal to transformers' DebertaV2Model.

DeBERTa v1's network (deberta.py) with what v2 changes: separate biased q/k/v projections, log-bucketed
relative positions (``position_buckets``), optionally shared position projections (``share_att_key``), a
LayerNorm on the relative embeddings (``norm_rel_ebd``) and a convolution beside the first layer
(``conv_kernel_size``). v3 checkpoints are v2 checkpoints (model_type "deberta-v2").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from peftcore.models.convert.tables import DEBERTA_V2
from peftcore.models.deberta import DebertaConfig, DebertaLayer, DebertaModel, relative_index
from peftcore.models.dropout import Dropout
from peftcore.models.layers import ACTIVATIONS, Padding, check_choice, check_positive

NORM_REL_EBD = ("none", "layer_norm")


@dataclass(frozen=True, kw_only=True)
class DebertaV2Config(DebertaConfig):
    """deberta-v2-xlarge defaults; field names are those of transformers' DebertaV2Config.

    ``position_buckets <= 0`` means no bucketing; ``conv_kernel_size = 0`` means no convolution layer;
    ``attention_head_size`` must be hidden_size / num_attention_heads when given.
    """

    model_type: ClassVar[str] = "deberta-v2"
    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    position_buckets: int = -1
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    attention_head_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.talking_head:
            raise ValueError(f"{name}.talking_head=True: DeBERTa v2 has no talking-head attention (transformers "
                             "ignores the field); use DebertaConfig for a v1 model.")
        for part in self.norm_rel_ebd.lower().split("|"):
            check_choice(name, "norm_rel_ebd", part.strip(), NORM_REL_EBD)
        check_choice(name, "conv_act", self.conv_act, ACTIVATIONS)
        check_positive(name, conv_groups=self.conv_groups)
        if self.conv_kernel_size < 0 or (self.conv_kernel_size and self.conv_kernel_size % 2 == 0):
            raise ValueError(f"{name}.conv_kernel_size={self.conv_kernel_size} must be 0 (no convolution) or odd: "
                             "an even kernel changes the sequence length.")
        if self.conv_kernel_size and self.hidden_size % self.conv_groups:
            raise ValueError(f"{name}.conv_groups={self.conv_groups} does not divide hidden_size={self.hidden_size}.")
        head_size = self.hidden_size // self.num_attention_heads
        if self.attention_head_size is None:
            object.__setattr__(self, "attention_head_size", head_size)
        if self.attention_head_size != head_size:
            raise ValueError(f"{name}.attention_head_size={self.attention_head_size} is not supported; it must be "
                             f"hidden_size / num_attention_heads = {head_size} (or left unset).")
        if self.relative_attention and self.position_buckets > 0 and (
                self.position_buckets < 2 or self.max_relative - 1 <= self.position_buckets // 2):
            raise ValueError(f"{name}.position_buckets={self.position_buckets} needs at least 2 buckets and "
                             f"max_relative_positions - 1 > position_buckets // 2 (got max_relative_positions="
                             f"{self.max_relative}); the log buckets are undefined otherwise.")

    @property
    def pos_ebd_size(self) -> int:
        """Half the rows of the relative position table: position_buckets when bucketing, else max_relative."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @property
    def has_rel_norm(self) -> bool:
        return "layer_norm" in [part.strip() for part in self.norm_rel_ebd.lower().split("|")]


def log_bucket(delta: Tensor, buckets: int, max_position: int) -> Tensor:
    """Relative distances -> log buckets: exact within ±buckets/2, logarithmic beyond, up to max_position.

    The same float32 operations as transformers' ``make_log_bucket_position``, so that ``ceil`` rounds alike.
    """
    sign = torch.sign(delta)
    mid = buckets // 2
    near = (delta < mid) & (delta > -mid)
    magnitude = torch.where(near, torch.tensor(mid - 1).type_as(delta), delta.abs())
    log_pos = torch.ceil(torch.log(magnitude / mid) / torch.log(torch.tensor((max_position - 1) / mid))
                         * (mid - 1)) + mid
    return torch.where(magnitude <= mid, delta.type_as(log_pos), log_pos * sign).long()  # (T, T)


class ConvLayer(nn.Module):
    """norm(h + act(conv(x))) with padding zeroed, x the first layer's input, h its output (transformers' ConvLayer)."""

    def __init__(self, config: DebertaV2Config) -> None:
        super().__init__()
        C, size = config.hidden_size, config.conv_kernel_size
        self.conv = nn.Conv1d(C, C, size, padding=(size - 1) // 2, groups=config.conv_groups)
        self.act = ACTIVATIONS[config.conv_act]
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, h: Tensor, attention_mask: Tensor | None) -> Tensor:
        keep = attention_mask[..., None].to(x.dtype) if attention_mask is not None else None  # (B, T, 1)
        out = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        if keep is not None:
            out = out * keep
        out = self.norm(h + self.act(self.dropout(out)))
        return out if keep is None else out * keep


class DebertaV2Model(DebertaModel):
    """DeBERTa v2/v3 encoder with optional task head (``config.head``)."""

    config_class = DebertaV2Config
    architecture = DEBERTA_V2

    def __init__(self, config: DebertaV2Config) -> None:
        super().__init__(config)
        self.rel_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.has_rel_norm else None
        self.conv = ConvLayer(config) if config.conv_kernel_size > 0 else None

    def first_layer_output(self, embedded: Tensor, h: Tensor, padding: Padding) -> Tensor:
        """h joined by a convolution over the first layer's input, the embeddings (B, T, C), if conv_kernel_size > 0."""
        if self.conv is None:
            return h
        return padding.pack(self.conv(embedded, padding.pad(h), padding.attention_mask))

    def build_layer(self, config: DebertaV2Config) -> DebertaLayer:
        """v2: biased q/k/v and position projections; q and k project the positions too under share_att_key."""
        return DebertaLayer(config, key_bias=True, share_att_key=config.share_att_key)

    def relative_positions(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The whole relative table (2S, C), S = pos_ebd_size, layer-normed under norm_rel_ebd, and each pair's
        (log-bucketed) row in it (T, T)."""
        positions = torch.arange(length, device=device)
        delta = positions[:, None] - positions[None, :]  # (T, T)
        if self.config.position_buckets > 0:
            delta = log_bucket(delta, self.config.position_buckets, self.config.max_relative)
        table = self.rel_embeddings.weight if self.rel_norm is None else self.rel_norm(self.rel_embeddings.weight)
        return table, relative_index(delta, self.config.pos_ebd_size)

