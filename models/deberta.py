"""DeBERTa (He et al., 2020, "DeBERTa: Decoding-enhanced BERT with Disentangled Attention",
https://arxiv.org/abs/2006.03654), numerically equal to transformers' DebertaModel.

Post-LN encoder whose attention adds, to the content-to-content score q_i · k_j, a content-to-position term
q_i · pk[δ(i, j)] ("c2p") and a position-to-content term k_j · pq[δ(i, j)] ("p2c"), where pk and pq project a
table of relative position embeddings and δ(i, j) is the clamped relative distance i - j. The blocks shared with
DeBERTa v2 (embeddings, disentangled attention, layer, heads, the model's forward) live here; deberta_v2.py adds
only what v2 changes.

transformers fuses v1's q/k/v into one ``in_proj`` (per-head interleaved rows, see ``split_in_proj`` in
convert/tables.py); we keep separate q, k, v linears so that LoRA and (IA)^3 can adapt each alone.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from peftcore.models.attention import sdpa
from peftcore.models.convert.tables import DEBERTA
from peftcore.models.dropout import Dropout, dropout
from peftcore.models.layers import (
    ACTIVATIONS,
    EncoderConfig,
    EncoderOutput,
    FeedForward,
    Padding,
    QuestionAnsweringHead,
    TokenClassificationHead,
    additive_mask,
    check_choice,
    masked_lm_head,
    merge_heads,
    prompt_site,
    split_heads,
)
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.sites import EmbeddingSite, OutputSite, PrefixSite, ResidualSite, SiteLinear

POS_ATT_TYPES = ("c2p", "p2c")


@dataclass(frozen=True, kw_only=True)
class DebertaConfig(EncoderConfig):
    """deberta-base defaults; field names are those of transformers' DebertaConfig.

    ``max_relative_positions < 1`` means ``max_position_embeddings``; ``embedding_size`` and ``pooler_hidden_size``
    default to ``hidden_size``; ``pos_att_type`` also accepts transformers' old ``"c2p|p2c"`` string form.
    """

    model_type: ClassVar[str] = "deberta"
    vocab_size: int = 50265
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    add_pooling_layer: bool = False
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_biased_input: bool = True
    pos_att_type: tuple[str, ...] | str | None = ()  # "c2p|p2c" and None (none) become tuples
    talking_head: bool = False
    embedding_size: int | None = None
    pooler_hidden_size: int | None = None
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    cls_dropout: float | None = None
    legacy: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        kinds = self.pos_att_type
        if isinstance(kinds, str):  # transformers' backwards-compatible "c2p|p2c"
            kinds = [kind.strip() for kind in kinds.lower().split("|")]
        object.__setattr__(self, "pos_att_type", tuple(kinds or ()))
        for kind in self.pos_att_type:
            check_choice(name, "pos_att_type", kind, POS_ATT_TYPES)
        if len(set(self.pos_att_type)) != len(self.pos_att_type):
            raise ValueError(f"{name}.pos_att_type={self.pos_att_type!r} repeats a kind; list c2p and p2c once each.")
        for field in ("embedding_size", "pooler_hidden_size"):
            if getattr(self, field) is None:
                object.__setattr__(self, field, self.hidden_size)
        if self.pooler_hidden_size != self.hidden_size:
            raise ValueError(f"{name}.pooler_hidden_size={self.pooler_hidden_size} must equal hidden_size="
                             f"{self.hidden_size}: transformers' classifier reads hidden_size features from it.")
        check_choice(name, "pooler_hidden_act", self.pooler_hidden_act, ACTIVATIONS)
        for field in ("pooler_dropout", "cls_dropout"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name}.{field} must lie in [0, 1), got {value!r}.")
        if self.head == "masked_lm" and not self.legacy:
            raise ValueError(f"{name}.legacy=False (the lm_predictions.lm_head masked-LM head) is not supported; "
                             "use legacy=True, the cls.predictions head transformers builds by default.")

    @property
    def max_relative(self) -> int:
        """The largest relative distance told apart: max_relative_positions, or max_position_embeddings if < 1."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def embedding_width(self) -> int:
        return self.embedding_size

    @property
    def pos_ebd_size(self) -> int:
        """Half the rows of the relative position table (transformers' name)."""
        return self.max_relative


def relative_index(delta: Tensor, span: int) -> Tensor:
    """Relative distances (T, T) -> rows of a (2 span)-row relative embedding table, clamped at both ends."""
    return (delta + span).clamp(0, 2 * span - 1)  # (T, T)


class DebertaEmbeddings(nn.Module):
    """word (+ position) (+ token type) embeddings, projected to C when embedding_size differs, LayerNorm,
    padding positions zeroed, dropout (transformers' DebertaEmbeddings and DebertaV2Embeddings)."""

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__()
        E, C = config.embedding_size, config.hidden_size
        self.word = nn.Embedding(config.vocab_size, E, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, E) if config.position_biased_input else None
        self.token_type = nn.Embedding(config.type_vocab_size, E) if config.type_vocab_size > 0 else None
        self.proj = nn.Linear(E, C, bias=False) if E != C else None
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.site = EmbeddingSite()  # site embeddings

    def forward(self, input_ids: Tensor | None, token_type_ids: Tensor | None, position_ids: Tensor | None,
                inputs_embeds: Tensor | None, attention_mask: Tensor | None) -> Tensor:
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        if self.position is not None:
            x = x + (self.position.weight[:x.shape[1]] if position_ids is None else self.position(position_ids))
        if self.token_type is not None:  # token type 0 when none are given
            x = x + (self.token_type.weight[0] if token_type_ids is None else self.token_type(token_type_ids))
        if self.proj is not None:
            x = self.proj(x)  # (B, T, C)
        x = self.norm(x)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return self.site(self.dropout(x))


class DisentangledAttention(nn.Module):
    """softmax((q kᵀ + c2p + p2c) / √(D · (1 + len(pos_att_type))) + mask) v, with its sites.

    c2p(i, j) = q_i · pk[δ(i, j)] and p2c(i, j) = k_j · pq[δ(i, j)], where pk and pq project the relative
    embeddings (with k and q themselves under v2's share_att_key). The scale counts pos_att_type even without
    relative_attention, as transformers does. talking_head (v1) mixes the heads' scores before the softmax and
    their probabilities after it (Shazeer et al., 2020, https://arxiv.org/abs/2003.02436).

    Args:
        key_bias: whether k and the c2p projection have biases (v2) or not (v1's fused in_proj and pos_proj).
        share_att_key: project the relative embeddings with q and k instead of their own linears (v2).
    """

    def __init__(self, config: DebertaConfig, key_bias: bool, share_att_key: bool) -> None:
        super().__init__()
        C, H = config.hidden_size, config.num_attention_heads
        self.num_heads = H
        self.scale = math.sqrt(C // H * (1 + len(config.pos_att_type)))
        self.dropout_p = config.attention_probs_dropout_prob
        self.q = SiteLinear(C, C)  # site attn.q
        self.k = SiteLinear(C, C, bias=key_bias)  # site attn.k
        self.v = SiteLinear(C, C)  # site attn.v
        self.prefix = PrefixSite()  # site attn.prefix
        self.out = SiteLinear(C, C)  # site attn.out
        self.residual = ResidualSite(nn.LayerNorm(C, eps=config.layer_norm_eps))  # site attn.residual (by the layer)
        self.c2p = config.relative_attention and "c2p" in config.pos_att_type
        self.p2c = config.relative_attention and "p2c" in config.pos_att_type
        self.share_att_key = share_att_key
        self.pos_k = nn.Linear(C, C, bias=key_bias) if self.c2p and not share_att_key else None
        self.pos_q = nn.Linear(C, C) if self.p2c and not share_att_key else None
        self.pos_dropout = Dropout(config.hidden_dropout_prob)
        self.head_logits = nn.Linear(H, H, bias=False) if config.talking_head else None
        self.head_weights = nn.Linear(H, H, bias=False) if config.talking_head else None

    def forward(self, x: Tensor, padding: Padding, relative: tuple[Tensor, Tensor] | None,
                output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) or packed (1, N, C), additive mask (B, 1, T, T) in ``padding``, relative = (embeddings (2S, C),
        index (T, T)) -> x's shape."""
        q, k, v = (split_heads(padding.pad(proj(x)), self.num_heads) for proj in (self.q, self.k, self.v))
        mask = padding.mask
        bias = self.position_bias(q, k, *relative) if relative is not None and (self.c2p or self.p2c) else None
        if self.prefix.plug is not None:
            k, v, mask = self.prefix(k, v, mask, x)  # (B, H, P+T, D)
            if bias is not None:  # prefix keys have no position: no c2p/p2c term for them
                bias = F.pad(bias, (k.shape[-2] - bias.shape[-1], 0))  # (B, H, T, P+T)
        dropout_p = self.dropout_p if self.training else 0.0
        if self.head_logits is None and not output_attentions:
            # the clamp keeps a masked score at the dtype's minimum: a whole masked row stays uniform, never NaN
            attn_mask = mask if bias is None else bias if mask is None else (
                bias + mask).clamp_min(torch.finfo(mask.dtype).min)
            y = sdpa(q, k, v, attn_mask, dropout_p, 1 / self.scale)
            return self.out(padding.pack(merge_heads(y))), None  # (B, T, C)
        scores = q @ k.transpose(-1, -2) / self.scale  # (B, H, T, P+T)
        if bias is not None:
            scores = scores + bias
        if self.head_logits is not None:
            scores = self.head_logits(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if mask is not None:
            scores = (scores + mask).clamp_min(torch.finfo(mask.dtype).min)
        probs = dropout(scores.softmax(dim=-1), dropout_p)
        if self.head_weights is not None:
            probs = self.head_weights(probs.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.out(padding.pack(merge_heads(probs @ v))), probs  # (B, T, C)

    def position_bias(self, q: Tensor, k: Tensor, embeddings: Tensor, index: Tensor) -> Tensor:
        """(c2p + p2c) / scale for q, k (B, H, T, D), relative embeddings (2S, C) and their index (T, T)."""
        B, H, T, _ = q.shape
        rel = self.pos_dropout(embeddings)[None]  # (1, 2S, C)
        index = index.expand(B, H, T, T)
        bias = 0.0
        if self.c2p:
            pk = split_heads(self.project_positions(self.k, self.pos_k, rel, B), H)  # (1 or B, H, 2S, D)
            bias = bias + torch.gather(q @ pk.transpose(-1, -2), -1, index)  # (B, H, T, T): q_i · pk[δ(i, j)]
        if self.p2c:
            pq = split_heads(self.project_positions(self.q, self.pos_q, rel, B), H)  # (1 or B, H, 2S, D)
            by_key = torch.gather(k @ pq.transpose(-1, -2), -1, index.transpose(-1, -2))  # (B, H, T_k, T_q)
            bias = bias + by_key.transpose(-1, -2)  # (B, H, T, T): k_j · pq[δ(i, j)]
        return bias / self.scale


    def project_positions(self, shared: SiteLinear, own: nn.Linear | None, rel: Tensor, rows: int) -> Tensor:
        """The relative embeddings (1, 2S, C) through the position projection: its ``own`` linear, or under
        ``share_att_key`` the ``shared`` q or k, per batch row where adapters there differ by row."""
        if not self.share_att_key:
            return own(rel)
        return shared(rel.expand(rows, -1, -1) if shared.splits_rows else rel)


class DebertaLayer(nn.Module):
    """Post-LN layer around disentangled attention: x = norm(x + attn(x)); x = norm(x + ffn(x))."""

    def __init__(self, config: DebertaConfig, key_bias: bool, share_att_key: bool) -> None:
        super().__init__()
        C = config.hidden_size
        self.attn = DisentangledAttention(config, key_bias, share_att_key)
        self.ffn = FeedForward(C, config.intermediate_size, config.hidden_act,
                               nn.LayerNorm(C, eps=config.layer_norm_eps))
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.output = OutputSite()  # site output

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False,
                relative: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
        h, probs = self.attn(x, padding, relative, output_attentions)
        x = self.attn.residual(self.dropout(h), x)  # site attn.residual
        x = self.ffn.residual(self.dropout(self.ffn(x)), x)  # site ffn.residual
        return self.output(x, padding), probs  # site output


class ContextPoolerHead(nn.Module):
    """DeBERTa's sequence classifier (transformers' ContextPooler + classifier):
    classifier(dropout(act(dense(dropout(x[:, 0])))))."""

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__()
        self.pool_dropout = Dropout(config.pooler_dropout)
        self.dense = nn.Linear(config.pooler_hidden_size, config.pooler_hidden_size)
        self.act = ACTIVATIONS[config.pooler_hidden_act]
        self.dropout = Dropout(config.hidden_dropout_prob if config.cls_dropout is None else config.cls_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        h = self.act(self.dense(self.pool_dropout(x[:, 0])))  # (B, C)
        return self.classifier(self.dropout(h))  # (B, L)


class DebertaModel(PretrainedEncoder):
    """DeBERTa encoder with optional task head (``config.head``); DeBERTa has no pooler."""

    config_class = DebertaConfig
    architecture = DEBERTA
    head_classes: ClassVar = {
        "masked_lm": masked_lm_head,  # transformers' legacy head: BERT's
        "sequence_classification": ContextPoolerHead,
        "token_classification": TokenClassificationHead,
        "question_answering": QuestionAnsweringHead,
    }

    def __init__(self, config: DebertaConfig) -> None:
        super().__init__(config)
        self.embeddings = DebertaEmbeddings(config)  # ends in site embeddings
        self.prompt = prompt_site(self.embeddings, self.embed_text)  # site prompt
        self.rel_embeddings = (nn.Embedding(2 * config.pos_ebd_size, config.hidden_size)
                               if config.relative_attention else None)
        self.layers = nn.ModuleList(self.build_layer(config) for _ in range(config.num_hidden_layers))
        self.pooler = None
        self.head = self.build_head()
        self.apply(self.init_weights)

    def build_layer(self, config: DebertaConfig) -> DebertaLayer:
        """v1: the fused in_proj has no key bias, pos_proj none either, and nothing is shared."""
        return DebertaLayer(config, key_bias=False, share_att_key=False)

    @property
    def max_length(self) -> int:
        """The longest sequence: the position table's rows, unbounded without absolute positions."""
        return self.config.max_position_embeddings if self.config.position_biased_input else sys.maxsize

    def relative_positions(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The relative embeddings (2S, C) a length-T input reads, and each query/key pair's row in them (T, T).

        v1 reads the middle 2S rows, S = min(T, max_relative) (transformers' ``att_span``).
        """
        span = self.config.max_relative
        S = min(length, span)
        positions = torch.arange(length, device=device)
        index = relative_index(positions[:, None] - positions[None, :], S)  # (T, T)
        return self.rel_embeddings.weight[span - S:span + S], index  # (2S, C)

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

        The mask is transformers' pairwise one: a padded position attends to no token, which the softmax turns into
        uniform attention over all tokens. Padded positions' outputs therefore equal transformers' too, which matters
        wherever they are read: gates (UniPELT, prefix and LoRA gates) average over every position.
        """
        self.check_ids(input_ids, inputs_embeds, attention_mask, token_type_ids, self.max_length, position_ids)
        device = (input_ids if input_ids is not None else inputs_embeds).device
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, attention_mask)  # (B, T, C)
        x, attention_mask, positions = self.prompt(x, attention_mask)  # site prompt: (B, P+T, C) when active
        T = x.shape[1]
        mask = additive_mask(attention_mask, x.dtype)  # (B, 1, 1, T)
        if mask is not None:  # padded query rows masked whole, as transformers' get_attention_mask does
            mask = mask.expand(-1, -1, T, -1).masked_fill(attention_mask[:, None, :, None] == 0,
                                                          torch.finfo(x.dtype).min)  # (B, 1, T, T)
        padding = Padding.of(attention_mask, mask, self.unpadded())
        relative = self.relative_positions(T, device) if self.rel_embeddings is not None else None
        return self.run_layers(x, padding, output_hidden_states, output_attentions, positions, relative=relative)
