"""ModernBERT (Warner et al., 2024, "Smarter, Better, Faster, Longer", https://arxiv.org/abs/2412.13663),
numerically equal to transformers 4.57's ModernBertModel and its ModernBertFor{MaskedLM, SequenceClassification,
TokenClassification, QuestionAnswering} heads.

Pre-norm layers (layer 0 has no attention norm: its input is the normed embeddings) over token embeddings with a
LayerNorm; rotary positions (models/rotary.py) with ``global_rope_theta`` in every ``global_attn_every_n_layers``-th
layer, counting from 0, and ``local_rope_theta`` in the others, which attend to the keys at most
``local_attention // 2`` tokens away; a GeGLU feed-forward; biases off by default; a final norm.

How the sites sit on ModernBERT's fused and gated linears:

- ``attn.q``, ``attn.k``, ``attn.v`` are three linears, not one fused ``Wqkv``: conversion splits ``Wqkv``'s rows into
  thirds on load and joins them on export (the table in convert/modernbert.py), so LoRA and (IA)^3 see q, k and v
  as on every other model, and a LoRA on q and v alone is possible. PEFT, which adapts whole modules, gives a
  ``Wqkv`` LoRA one ``lora_A`` (r, C) and one ``lora_B`` (3 C, r): it loads as q, k and v LoRAs sharing that A with
  B's thirds (the same outputs), and ours export to PEFT's layout as one ``Wqkv`` LoRA of rank 3 r with block
  structure (rank_pattern says so), as DeBERTa v1's fused ``in_proj`` does.
- ``ffn.intermediate`` is ``Wi`` whole (C -> 2 I: the input half, then the gate half, as transformers chunks it), so
  LoRA and (IA)^3 there act on both halves, as PEFT's ``Wi`` LoRA does; ``ffn.output`` is ``Wo`` (I -> C).
- The attention output projection ``Wo`` is ``attn.out``, as in every model, so PEFT's ``target_modules=["Wqkv",
  "Wo", "Wi"]`` (its ``Wo`` selects both the attention's and the MLP's) loads whole.
- Bottleneck and parallel adapters sit on the pre-norm residuals as in ViT: ``attn.residual`` and ``ffn.residual``
  take the block output h and the residual stream x and give ``h + x`` while empty (no norm of their own), so a
  Pfeiffer adapter transforms the FFN block's output before it joins the stream.
- Prefix tuning's keys get no rotary positions: the prefix site prepends them after q and k are rotated, as
  AdapterHub's and PEFT's prefix tuning do on rotary models (the prefix is position-free memory, learnt as such;
  rotating it by a position would tie it to one). In local layers every query attends to every prefix position,
  whatever the window: the window limits the distance between tokens, and a prefix is at no distance.
- A prompt (prompt tuning) takes positions 0..P-1 in front of the tokens, as transformers would number embeddings
  given with the prompt in front.

Unpadded execution as in BERT (models/layers.py ``Padding``): the real tokens run packed through every token-wise
op; attention runs per sequence, with each sequence's own rotary positions and, in local layers, the window
(rotary.attend_windowed). ``unpad=False`` runs transformers' padded layout and equals it at padded positions too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from peftcore.models.attention import attend_explicitly, attend_unpadded, merge_heads, sdpa, split_heads
from peftcore.models.convert.modernbert import MODERNBERT
from peftcore.models.dropout import Dropout
from peftcore.models.layers import (
    EncoderConfig,
    EncoderOutput,
    Padding,
    SelfAttention,
    additive_mask,
    check_choice,
    check_positive,
    prompt_site,
)
from peftcore.models.pretrained import PretrainedEncoder
from peftcore.models.rotary import Rotary, attend_windowed, rotate
from peftcore.sites import ACTIVATIONS, EmbeddingSite, MaskedLMHead, OutputSite, ResidualSite, SiteLinear

HEADS = ("masked_lm", "sequence_classification", "token_classification", "question_answering")


@dataclass(frozen=True, kw_only=True)
class ModernBertConfig(EncoderConfig):
    """ModernBERT-base's shapes, which are transformers' ModernBertConfig defaults.

    config.json names four shared fields otherwise: ``norm_eps`` (``layer_norm_eps``), ``hidden_activation``
    (``hidden_act``), ``embedding_dropout`` (``hidden_dropout_prob``) and ``attention_dropout``
    (``attention_probs_dropout_prob``, also the dropout after the attention output); the record renames them.
    ModernBERT has no token types and no pooler. ``classifier_pooling`` ("cls" or "mean") is how the sequence
    classifier pools; ``classifier_dropout`` is the dropout of every classifier head.
    """

    model_type: ClassVar[str] = "modernbert"
    vocab_size: int = 50368
    num_hidden_layers: int = 22
    intermediate_size: int = 1152
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    mlp_dropout: float = 0.0
    max_position_embeddings: int = 8192
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-5
    initializer_cutoff_factor: float = 2.0
    pad_token_id: int = 50283
    bos_token_id: int | None = 50281
    eos_token_id: int | None = 50282
    add_pooling_layer: bool = False
    classifier_dropout: float | None = 0.0
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_bias: bool = False
    classifier_activation: str = "gelu"
    classifier_pooling: str = "cls"
    global_rope_theta: float = 160000.0
    local_rope_theta: float | None = 10000.0
    global_attn_every_n_layers: int = 3
    local_attention: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, global_attn_every_n_layers=self.global_attn_every_n_layers,
                       local_attention=self.local_attention)
        check_choice(name, "head", self.head, (None, *HEADS))
        check_choice(name, "classifier_pooling", self.classifier_pooling, ("cls", "mean"))
        check_choice(name, "classifier_activation", self.classifier_activation, ACTIVATIONS)
        if self.type_vocab_size != 0:
            raise ValueError(f"{name}.type_vocab_size={self.type_vocab_size}: ModernBERT has no token-type "
                             "embeddings; leave it at 0.")
        if self.add_pooling_layer:
            raise ValueError(f"{name}.add_pooling_layer=True: ModernBERT has no pooler (its sequence classifier pools "
                             "as classifier_pooling says); leave it False.")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError(f"{name}: rotary positions rotate pairs of features, so the head size hidden_size / "
                             f"num_attention_heads = {self.hidden_size // self.num_attention_heads} must be even.")
        for field in ("global_rope_theta", "local_rope_theta"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"{name}.{field} must be positive, got {value!r}.")
        if not 0.0 <= self.mlp_dropout < 1.0:
            raise ValueError(f"{name}.mlp_dropout must lie in [0, 1), got {self.mlp_dropout!r}.")

    def is_global(self, layer: int) -> bool:
        """Whether ``layer`` attends to every token (else within the local window), as transformers decides."""
        return layer % self.global_attn_every_n_layers == 0

    def rope_theta(self, layer: int) -> float:
        local = self.local_rope_theta if self.local_rope_theta is not None else self.global_rope_theta
        return self.global_rope_theta if self.is_global(layer) else local


class ModernBertEmbeddings(nn.Module):
    """token embeddings, LayerNorm, dropout; the embeddings site after them."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.word = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.norm_bias)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.site = EmbeddingSite()  # site embeddings

    def forward(self, input_ids: Tensor | None, inputs_embeds: Tensor | None = None) -> Tensor:
        x = self.word(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        return self.site(self.dropout(self.norm(x)))


class RotaryAttention(SelfAttention):
    """Self-attention with rotary positions on q and k, over every token (global layers) or the tokens at most
    ``half_window`` away (local layers); the q/k/v, prefix and residual sites of ``SelfAttention``."""

    def __init__(self, config: ModernBertConfig, layer: int) -> None:
        C = config.hidden_size
        super().__init__(C, config.num_attention_heads, config.attention_probs_dropout_prob, None,
                         config.attention_bias)
        self.out = SiteLinear(C, C, config.attention_bias)  # site attn.out (transformers' attn.Wo)
        self.theta = config.rope_theta(layer)
        self.half_window = None if config.is_global(layer) else config.local_attention // 2

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False, rotary: Rotary | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C), or the packed real tokens (1, N, C) when ``padding`` says so -> the same shape."""
        H = self.num_heads
        cos, sin = rotary.tables[self.theta]  # (B, T, D/2) or (1, N, D/2), as x
        q, k, v = rotate(self.q(x), cos, sin, H), rotate(self.k(x), cos, sin, H), self.v(x)
        dropout_p = self.dropout_p if self.training else 0.0
        if padding.lengths is not None and not output_attentions:
            prefix = self.prefix_rows(x, len(padding.lengths))
            y = (attend_unpadded(q, k, v, padding.lengths, H, dropout_p, prefix) if self.half_window is None
                 else attend_windowed(q, k, v, padding.lengths, H, dropout_p, rotary.row_masks, prefix))
            return self.out(y), None
        q, k, v = (split_heads(padding.pad(t), H) for t in (q, k, v))  # (B, H, T, D)
        mask = padding.mask if self.half_window is None else rotary.local_mask
        if self.prefix.plug is not None:
            k, v, mask = self.prefix(k, v, mask, x)  # (B, H, P+T, D); prefix columns attendable in every layer
        if output_attentions:
            y, probs = attend_explicitly(q, k, v, mask, dropout_p)
        else:
            y, probs = sdpa(q, k, v, mask, dropout_p), None
        return self.out(padding.pack(merge_heads(y))), probs  # (B, T, C)


class GatedFeedForward(nn.Module):
    """GeGLU: Wo(dropout(act(input) · gate)), input and gate the two halves of Wi x; its linear and residual sites."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        C, inner = config.hidden_size, config.intermediate_size
        self.intermediate = SiteLinear(C, 2 * inner, config.mlp_bias)  # site ffn.intermediate (transformers' Wi)
        self.act = ACTIVATIONS[config.hidden_act]
        self.dropout = Dropout(config.mlp_dropout)
        self.output = SiteLinear(inner, C, config.mlp_bias)  # site ffn.output (transformers' mlp.Wo)
        self.residual = ResidualSite(None)  # site ffn.residual (applied by the layer)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.intermediate(x).chunk(2, dim=-1)  # (B, T, intermediate_size) each
        return self.output(self.dropout(self.act(h) * gate))


class ModernBertLayer(nn.Module):
    """Pre-norm layer: x = x + dropout(attn(attn_norm(x))); x = x + ffn(ffn_norm(x)); no attention norm in layer 0."""

    def __init__(self, config: ModernBertConfig, layer: int) -> None:
        super().__init__()
        C, eps, bias = config.hidden_size, config.layer_norm_eps, config.norm_bias
        self.attn_norm = nn.LayerNorm(C, eps=eps, bias=bias) if layer else nn.Identity()
        self.attn = RotaryAttention(config, layer)
        self.dropout = Dropout(config.attention_probs_dropout_prob)  # transformers' attn.out_drop
        self.ffn_norm = nn.LayerNorm(C, eps=eps, bias=bias)
        self.ffn = GatedFeedForward(config)
        self.output = OutputSite()  # site output

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False, rotary: Rotary | None = None
                ) -> tuple[Tensor, Tensor | None]:
        h, probs = self.attn(self.attn_norm(x), padding, output_attentions, rotary)
        x = self.attn.residual(self.dropout(h), x)  # site attn.residual
        x = self.ffn.residual(self.ffn(self.ffn_norm(x)), x)  # site ffn.residual
        return self.output(x, padding), probs  # site output


class ModernBertClassificationHead(nn.Module):
    """transformers' ModernBertPredictionHead (dense -> activation -> LayerNorm), dropout and a classifier: on the
    pooled output (sequence classification) or on every token (token classification, question answering)."""

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__()
        C = config.hidden_size
        self.dense = nn.Linear(C, C, bias=config.classifier_bias)
        self.act = ACTIVATIONS[config.classifier_activation]
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.norm_bias)
        self.dropout = Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(C, config.num_labels)

    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return self.classifier(self.dropout(self.norm(self.act(self.dense(x)))))  # (B, T, L)


class ModernBertSequenceClassificationHead(ModernBertClassificationHead):
    def forward(self, x: Tensor, pooled: Tensor | None) -> Tensor:
        return super().forward(pooled, None)  # (B, L)


class ModernBertQuestionAnsweringHead(ModernBertClassificationHead):
    predicts_spans = True


class ModernBertMaskedLMHead(MaskedLMHead):
    """transformers' ModernBertPredictionHead and decoder, tied to the token embeddings when the config says so."""

    def __init__(self, config: ModernBertConfig) -> None:
        C = config.hidden_size
        super().__init__(C, C, config.vocab_size, config.classifier_activation, config.layer_norm_eps,
                         bias=config.decoder_bias)
        self.dense = nn.Linear(C, C, bias=config.classifier_bias)
        self.norm = nn.LayerNorm(C, eps=config.layer_norm_eps, bias=config.norm_bias)


class ModernBertModel(PretrainedEncoder):
    """ModernBERT encoder with optional task head (``config.head``); it has no pooler."""

    config_class = ModernBertConfig
    architecture = MODERNBERT
    head_classes: ClassVar = {
        "masked_lm": ModernBertMaskedLMHead,
        "sequence_classification": ModernBertSequenceClassificationHead,
        "token_classification": ModernBertClassificationHead,
        "question_answering": ModernBertQuestionAnsweringHead,
    }

    def __init__(self, config: ModernBertConfig) -> None:
        super().__init__(config)
        self.embeddings = ModernBertEmbeddings(config)  # ends in site embeddings
        self.prompt = prompt_site(self.embeddings, self.embed_text)  # site prompt
        self.layers = nn.ModuleList(ModernBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)  # final_norm
        self.pooler = None
        self.head = self.build_head()
        self.apply(self.init_weights)

    def init_weights(self, module: nn.Module) -> None:
        """transformers' initialisation: truncated normal weights (at ``initializer_cutoff_factor`` standard
        deviations), std ``initializer_range``, / sqrt(2 · layers) for the output projections and the head's dense,
        hidden_size^-0.5 for a classifier; zero biases, unit LayerNorms."""
        config = self.config
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            std = config.initializer_range
            if module is getattr(self.head, "classifier", None):
                std = config.hidden_size ** -0.5
            elif module is getattr(self.head, "dense", None) or any(
                    module is layer.attn.out or module is layer.ffn.output for layer in self.layers):
                std = std / (2.0 * config.num_hidden_layers) ** 0.5
            cutoff = config.initializer_cutoff_factor * std
            nn.init.trunc_normal_(module.weight, std=std, a=-cutoff, b=cutoff)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def max_length(self) -> int:
        """The longest sequence the model was trained for (rotary positions have no table to run out of)."""
        return self.config.max_position_embeddings

    def pool(self, x: Tensor, padding: Padding | None) -> Tensor | None:
        """What the model's own sequence classifier reads (None for other heads): the first token's hidden state, or
        with ``classifier_pooling="mean"`` the mean over the real tokens, as ModernBertForSequenceClassification."""
        if self.config.head != "sequence_classification":
            return None
        if self.config.classifier_pooling == "cls":
            return x[:, 0]  # (B, C)
        mask = padding.attention_mask if padding is not None else None
        if mask is None:
            return x.sum(dim=1) / x.shape[1]
        return (x * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)  # (B, C)

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
        """input_ids (B, T) -> EncoderOutput; attention_mask is 1 for real tokens and 0 for padding; position_ids
        (B, T) are the rotary positions (default 0..T-1 in every row, as transformers numbers them).

        ModernBERT has no token types: ``token_type_ids`` (our Tokenizer returns them) are accepted and ignored. A
        padded batch runs unpadded, as in BertModel.encode.
        """
        shape = self.check_ids(input_ids, inputs_embeds, attention_mask, token_type_ids, self.max_length,
                               position_ids)
        x = self.embeddings(input_ids, inputs_embeds)  # (B, T, C)
        x, attention_mask, positions = self.prompt(x, attention_mask)  # site prompt: (B, P+T, C) when active
        B, T = x.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(T, device=x.device).expand(B, T)  # (B, T)
        elif shape[1] == T:
            position_ids = position_ids.expand(B, T)  # (B, T): a (1, T) row serves every row, as in transformers
        else:
            raise ValueError("position_ids number the input's tokens, but an active prompt inserts tokens in front of "
                             "them; leave position_ids out (the prompt takes positions 0..P-1) or deactivate it.")
        padding = Padding.of(attention_mask, additive_mask(attention_mask, x.dtype), self.unpadded())
        config = self.config
        local = not all(config.is_global(i) for i in range(config.num_hidden_layers))
        rotary = Rotary.build(position_ids, (config.rope_theta(i) for i in range(config.num_hidden_layers)),
                              config.hidden_size // config.num_attention_heads, padding, x.dtype,
                              config.local_attention // 2 if local else None,
                              padded_layout=padding.lengths is None or output_attentions)
        return self.run_layers(x, padding, output_hidden_states, output_attentions, positions, rotary=rotary)


__all__ = ["ModernBertConfig", "ModernBertModel"]
