"""ALBERT (Lan et al., 2019, https://arxiv.org/abs/1909.11942), numerically equal to transformers' AlbertModel: BERT's
inputs, post-LN layers, pooler and heads, with ALBERT's two parameter reductions — factorised embeddings
(``embedding_size`` E wide, then ``embeddings.proj``, transformers' ``embedding_hidden_mapping_in``, up to C) and
layers shared across depth.

How layers are shared. transformers keeps ``num_hidden_groups`` groups of ``inner_group_num`` layers, and pass ``i`` of
``num_hidden_layers`` runs every layer of group ``⌊i / (num_hidden_layers / num_hidden_groups)⌋`` in turn
(``AlbertTransformer.forward``). ``model.layers`` holds each distinct layer once — ``num_hidden_groups ·
inner_group_num`` of them, a single one in every released checkpoint — and ``layer_schedule`` runs them in
transformers' order. Each base weight is therefore one parameter, under one state-dict key: the HF key table, the
optimizer, ``.to()`` and saving all see one tensor, with no aliases to track.

How adapters are shared: as the layers are. Sites are the distinct layers' (``model.layers[i]``, as in every model),
so an adapter has one module per distinct layer, and it runs wherever its layer runs. This is what both references do:
AdapterHub 1.3.0 attaches its modules to ``albert_layer_groups[g].albert_layers[j]``
(``AlbertModelAdaptersMixin.iter_layers``), PEFT wraps the shared ``nn.Linear`` modules. So parameter counts equal
AdapterHub's ``adapter_summary()``, adapter files of either load tensor for tensor, and layer indices (``leave_out``,
per-layer reduction factors, prefix-tuning's layer count, the keys of gate and fusion records) count distinct layers
as AdapterHub's ``layer_idx`` does; a gate's values are recorded once per pass, in columns, as AdapterHub records them.
Merging LoRA or (IA)^3 is exact: the weight it folds into serves exactly the passes its adapter runs in.

One module per pass instead (per-pass sites over shared weights) would give albert-base twelve adapter modules where
both references have one, load neither's files, and make a merge into a shared weight act on every pass.

Two differences from AdapterHub, each pinned in tests/models/test_albert.py: its ALBERT attention hands the
attention-residual adapters their two tensors swapped (ours adapt the attention output, as in every model), and
peftcore builds invertible adapters and masked-LM adapter heads ``hidden_size`` wide, where the embeddings site and
the tied decoder are E wide: on checkpoints with E < C (every released one) those two wait on peftcore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from peftcore.models.bert import BertModel
from peftcore.models.convert.albert import ALBERT
from peftcore.models.layers import (
    Embeddings,
    EncoderConfig,
    EncoderLayer,
    Padding,
    PooledClassificationHead,
    Pooler,
    QuestionAnsweringHead,
    TokenClassificationHead,
    check_positive,
    masked_lm_head,
    prompt_site,
)
from peftcore.models.pretrained import PretrainedEncoder


@dataclass(frozen=True, kw_only=True)
class AlbertConfig(EncoderConfig):
    """transformers' AlbertConfig defaults (albert-xxlarge's sizes) and field names; config.json's
    ``classifier_dropout_prob`` is ``classifier_dropout`` here, as in every other config (the record renames it)."""

    model_type: ClassVar[str] = "albert"
    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    classifier_dropout: float | None = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, embedding_size=self.embedding_size,
                       num_hidden_groups=self.num_hidden_groups, inner_group_num=self.inner_group_num)

    @property
    def embedding_width(self) -> int:
        return self.embedding_size

    @property
    def num_distinct_layers(self) -> int:
        """The layers that hold weights (``model.layers``); the forward runs ``num_hidden_layers`` passes over them."""
        return self.num_hidden_groups * self.inner_group_num


class AlbertEmbeddings(Embeddings):
    """BERT's embeddings, E wide, then ``proj`` up to C: ALBERT's ``embedding_hidden_mapping_in``, which it has even
    when E equals C. The embeddings site sees the E-wide embeddings, where AdapterHub's invertible adapters act."""

    def __init__(self, config: AlbertConfig) -> None:
        super().__init__(config)
        self.proj = nn.Linear(config.embedding_size, config.hidden_size)


class AlbertLayer(EncoderLayer):
    """BERT's post-LN layer without dropout on the feed-forward output (transformers' AlbertLayer adds it to the
    attention output undropped)."""

    def forward(self, x: Tensor, padding: Padding, output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
        h, probs = self.attn(x, padding, output_attentions)
        x = self.attn.residual(self.dropout(h), x)  # site attn.residual
        x = self.ffn.residual(self.ffn(x), x)  # site ffn.residual
        return self.output(x, padding), probs  # site output


class AlbertModel(PretrainedEncoder):
    """ALBERT encoder with optional pooler and task head (``config.head``), its layers run by ``layer_schedule``."""

    config_class = AlbertConfig
    architecture = ALBERT
    head_classes: ClassVar = {
        "masked_lm": masked_lm_head,  # dense onto embedding_size, decoder tied to the E-wide word embeddings
        "sequence_classification": PooledClassificationHead,
        "token_classification": TokenClassificationHead,
        "question_answering": QuestionAnsweringHead,
    }

    def __init__(self, config: AlbertConfig) -> None:
        super().__init__(config)
        self.embeddings = AlbertEmbeddings(config)  # ends in site embeddings, then proj
        self.prompt = prompt_site(self.embeddings, self.embed_text)  # site prompt
        self.layers = nn.ModuleList(AlbertLayer(config) for _ in range(config.num_distinct_layers))
        self.pooler = Pooler(config.hidden_size) if config.add_pooling_layer else None
        self.head = self.build_head()
        self.apply(self.init_weights)

    # ALBERT's inputs are BERT's: token types (0 unless given) and positions counted from 0
    max_length = BertModel.max_length
    default_position_ids = BertModel.default_position_ids
    encode = BertModel.encode

    def layer_schedule(self) -> list[tuple[nn.Module, bool]]:
        """``num_hidden_layers`` passes, each through every layer of its group; a pass's last layer gives one of the
        hidden states, as in transformers' AlbertTransformer (and attentions come from every layer run)."""
        config, layers = self.config, self.layers
        passes, inner = config.num_hidden_layers, config.inner_group_num
        groups = [int(i / (passes / config.num_hidden_groups)) for i in range(passes)]  # transformers' float division
        return [(layers[group * inner + j], j == inner - 1) for group in groups for j in range(inner)]
