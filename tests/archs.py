"""The architectures the tests run over: one entry per model_type, as config.json spells it ("deberta-v2").

Parametrize over names, timm style: ``@pytest.mark.parametrize("arch", ARCHS)``, or ``TEXT_ARCHS``,
``ADAPTERHUB_ARCHS``, ``BERT_FAMILY``, ``BASE_SIZED``. ``ARCHS[arch]`` holds our class (``model``), transformers' class
per head (``hf``), AdapterHub's flex-head class (None where AdapterHub has none: CamemBERT) and whether AdapterHub's
outputs are a reference, and builds:

- ``hf_config(variant, **fields)``: the reference config at test size (``SMALL``; ViT narrower, 16 px images);
  ``reference(hf_checkpoint, arch, head, variant, **fields)`` gives its checkpoint and model,
- ``config(variant, **fields)``: ours, the same,
- ``tiny_model(arch, variant, **fields)``: our tiny random model (``TINY``; seed 0, eval), for tests with no reference.

A variant is an option set that tests need on purpose. An entry lists those where it differs from its default, and
asking it for another one of ``DEFAULTING`` gives its default:

- ``default``: what most tests use. DeBERTa: relative attention with c2p and p2c (v2 adds 8 log buckets).
- ``plain``: the size alone, no options (DeBERTa with absolute positions only).
- ``wide``: SMALL's width everywhere: ViT widens to 64 (and 32 px images) for AdapterHub parity.
- ``clamped``: DeBERTa's relative distances clamped at 8, inside the padded test batch's 12 tokens (PEFT interop).
- ``every_tensor``: each optional tensor present, so that key tables meet all of them (talking heads, embedding
  projection, token types; v2's own position projections, rel-embedding norm and convolution).
- ``attention``: each option that touches attention or crosses tokens, fitted to tiny models (v1: talking heads,
  span 4; v2: 4 buckets, shared keys, convolution), for the unpadded-execution tests.
- ``base``: the released base checkpoint's shapes, for parameter counts at full size; BERT, RoBERTa, XLM-RoBERTa and
  ELECTRA (electra-base: its embeddings as wide as its layers) only.

ELECTRA's embeddings are as wide as its layers in every variant but ``every_tensor`` (``embedding_size`` 48, so its
``embeddings_project`` exists); tests/models/test_electra.py runs the projected model.

ALBERT runs four passes over two distinct layers (``num_hidden_groups=2``) in every variant; its embeddings are as wide
as its layers but in ``every_tensor`` (``embedding_size`` 48, and two layers per group); tests/models/test_albert.py
runs the factorised model.
DistilBERT's config.json names its sizes otherwise (``dim``, ``n_layers``...): ``hf_config`` renames them.
ModernBERT runs a global layer, then a local one whose window (2 tokens each side) the test batch's 12 tokens exceed;
``every_tensor`` turns on every bias it can have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adapters
import torch
import transformers as tf
from torch import Tensor

from peftcore.models import (
    AlbertModel,
    BertModel,
    CamembertModel,
    DebertaModel,
    DebertaV2Model,
    DistilBertModel,
    ElectraModel,
    EncoderConfig,
    ModernBertModel,
    RobertaModel,
    ViTModel,
    XLMRobertaModel,
)
from peftcore.models.pretrained import PretrainedEncoder
from tests.conftest import SMALL
from tests.parity import padded_batch

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
DEFAULTING = ("default", "wide", "clamped", "every_tensor", "attention")  # an entry without one uses its default

RELATIVE = dict(relative_attention=True, pos_att_type=["c2p", "p2c"])
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
# roberta-base: 514 positions and one token type, as our RobertaConfig's defaults have it and transformers' do not
ROBERTA_BASE = dict(BERT_BASE, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)
XLM_ROBERTA_BASE = dict(ROBERTA_BASE, vocab_size=250002)
ALBERT_SHARING = dict(num_hidden_layers=4, num_hidden_groups=2)  # two distinct layers, each run twice
ELECTRA_BASE = dict(BERT_BASE, embedding_size=768)  # electra-base-discriminator
# layer 0 global, layer 1 local with a window of 2 tokens each side: the test batch's 12 tokens exceed it. Weights
# 5x transformers' std: at 0.02 a pre-norm layer barely changes the residual stream, and tests would see little of it
MODERNBERT_WINDOW = dict(pad_token_id=0, local_attention=4, global_attn_every_n_layers=2, initializer_range=0.1)


@dataclass(frozen=True)
class Arch:
    """One architecture: our class, transformers' reference class per head, test sizes and option sets."""

    model: type[PretrainedEncoder]
    hf: Mapping[str | None, type[tf.PreTrainedModel]]  # head (our name; None: the bare encoder) -> transformers class
    size: Mapping[str, Any]  # the test size, of ours and of the reference
    tiny_size: Mapping[str, Any]
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    is_text: bool = True
    adapterhub: type[tf.PreTrainedModel] | None = None  # AdapterHub 1.3.0's flex-head model class
    adapterhub_reference: bool = False  # its outputs are a reference (DeBERTa v1's are not: DESIGN.md)

    @property
    def model_type(self) -> str:
        return self.model.config_class.model_type

    @property
    def config_class(self) -> type[EncoderConfig]:
        return self.model.config_class

    def options(self, variant: str) -> Mapping[str, Any]:
        if variant == "plain":
            return {}
        if variant in self.variants:
            return self.variants[variant]
        if variant in DEFAULTING:
            return self.variants.get("default", {})
        raise ValueError(f"{self.model_type} has no variant {variant!r}; it has plain, {', '.join(DEFAULTING)}"
                         + "".join(f", {name}" for name in self.variants if name not in DEFAULTING))

    def hf_config(self, variant: str = "default", **fields: Any) -> tf.PretrainedConfig:
        """The reference config at test size with ``variant``'s options; ``fields`` override both. Our field names
        become config.json's where the record renames them (DistilBERT's ``dim``, ``n_layers``, ...)."""
        renames = self.model.architecture.config_renames_back
        values = {**self.size, **self.options(variant), **fields}
        return self.hf[None].config_class(**{renames.get(key, key): value for key, value in values.items()})

    def config(self, variant: str = "default", **fields: Any) -> EncoderConfig:
        """Our config, as ``hf_config``'s."""
        return self.config_class(**{**self.size, **self.options(variant), **fields})


TEXT_TINY = dict(TINY, vocab_size=100)
ARCHS: Mapping[str, Arch] = {arch.model_type: arch for arch in (
    Arch(BertModel, {None: tf.BertModel, "masked_lm": tf.BertForMaskedLM,
                     "sequence_classification": tf.BertForSequenceClassification,
                     "token_classification": tf.BertForTokenClassification,
                     "question_answering": tf.BertForQuestionAnswering},
         SMALL, TEXT_TINY, variants={"base": BERT_BASE},
         adapterhub=adapters.BertAdapterModel, adapterhub_reference=True),
    Arch(RobertaModel, {None: tf.RobertaModel, "masked_lm": tf.RobertaForMaskedLM,
                        "sequence_classification": tf.RobertaForSequenceClassification,
                        "token_classification": tf.RobertaForTokenClassification,
                        "question_answering": tf.RobertaForQuestionAnswering},
         SMALL, TEXT_TINY, variants={"base": ROBERTA_BASE},
         adapterhub=adapters.RobertaAdapterModel, adapterhub_reference=True),
    Arch(XLMRobertaModel, {None: tf.XLMRobertaModel, "masked_lm": tf.XLMRobertaForMaskedLM,
                           "sequence_classification": tf.XLMRobertaForSequenceClassification,
                           "token_classification": tf.XLMRobertaForTokenClassification,
                           "question_answering": tf.XLMRobertaForQuestionAnswering},
         SMALL, TEXT_TINY, variants={"base": XLM_ROBERTA_BASE},
         adapterhub=adapters.XLMRobertaAdapterModel, adapterhub_reference=True),
    Arch(CamembertModel, {None: tf.CamembertModel, "masked_lm": tf.CamembertForMaskedLM,
                          "sequence_classification": tf.CamembertForSequenceClassification,
                          "token_classification": tf.CamembertForTokenClassification,
                          "question_answering": tf.CamembertForQuestionAnswering},
         SMALL, TEXT_TINY),  # AdapterHub 1.3.0 has no CamemBERT: adapters.init refuses the model type
    Arch(ElectraModel, {None: tf.ElectraModel, "masked_lm": tf.ElectraForMaskedLM,
                        "sequence_classification": tf.ElectraForSequenceClassification,
                        "token_classification": tf.ElectraForTokenClassification,
                        "question_answering": tf.ElectraForQuestionAnswering},
         dict(SMALL, embedding_size=SMALL["hidden_size"]), dict(TEXT_TINY, embedding_size=TINY["hidden_size"]),
         variants={"every_tensor": dict(embedding_size=48), "base": ELECTRA_BASE},
         adapterhub=adapters.ElectraAdapterModel, adapterhub_reference=True),
    Arch(DebertaModel, {None: tf.DebertaModel, "masked_lm": tf.DebertaForMaskedLM,
                        "sequence_classification": tf.DebertaForSequenceClassification,
                        "token_classification": tf.DebertaForTokenClassification,
                        "question_answering": tf.DebertaForQuestionAnswering},
         SMALL, TEXT_TINY, variants={
             "default": RELATIVE,
             "clamped": dict(RELATIVE, max_relative_positions=8),
             "every_tensor": dict(RELATIVE, talking_head=True, type_vocab_size=2, embedding_size=48),
             "attention": dict(RELATIVE, max_relative_positions=4, talking_head=True),
         },
         adapterhub=adapters.DebertaAdapterModel, adapterhub_reference=False),  # keys a reference, outputs not
    Arch(DebertaV2Model, {None: tf.DebertaV2Model, "masked_lm": tf.DebertaV2ForMaskedLM,
                          "sequence_classification": tf.DebertaV2ForSequenceClassification,
                          "token_classification": tf.DebertaV2ForTokenClassification,
                          "question_answering": tf.DebertaV2ForQuestionAnswering},
         SMALL, TEXT_TINY, variants={
             "default": dict(RELATIVE, position_buckets=8),
             "clamped": dict(RELATIVE, max_relative_positions=8),
             "every_tensor": dict(RELATIVE, position_buckets=8, max_relative_positions=32, norm_rel_ebd="layer_norm",
                                  conv_kernel_size=3, type_vocab_size=2, embedding_size=48),  # own position projections
             "attention": dict(RELATIVE, position_buckets=4, max_relative_positions=6, share_att_key=True,
                               norm_rel_ebd="layer_norm", conv_kernel_size=3),
         },
         adapterhub=adapters.DebertaV2AdapterModel, adapterhub_reference=True),
    Arch(ViTModel, {None: tf.ViTModel, "image_classification": tf.ViTForImageClassification},
         dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=16,
              patch_size=8),
         dict(TINY, image_size=16, patch_size=8), variants={
             "wide": dict(hidden_size=64, num_attention_heads=4, intermediate_size=96, image_size=32),
         },
         is_text=False, adapterhub=adapters.ViTAdapterModel, adapterhub_reference=True),
    Arch(DistilBertModel, {None: tf.DistilBertModel, "masked_lm": tf.DistilBertForMaskedLM,
                           "sequence_classification": tf.DistilBertForSequenceClassification,
                           "token_classification": tf.DistilBertForTokenClassification,
                           "question_answering": tf.DistilBertForQuestionAnswering},
         SMALL, TEXT_TINY, adapterhub=adapters.DistilBertAdapterModel, adapterhub_reference=True),
    Arch(AlbertModel, {None: tf.AlbertModel, "masked_lm": tf.AlbertForMaskedLM,
                       "sequence_classification": tf.AlbertForSequenceClassification,
                       "token_classification": tf.AlbertForTokenClassification,
                       "question_answering": tf.AlbertForQuestionAnswering},
         dict(SMALL, **ALBERT_SHARING, embedding_size=SMALL["hidden_size"]),
         dict(TEXT_TINY, **ALBERT_SHARING, embedding_size=TEXT_TINY["hidden_size"]),
         variants={"every_tensor": dict(embedding_size=48, inner_group_num=2)},
         adapterhub=adapters.AlbertAdapterModel, adapterhub_reference=True),
    Arch(ModernBertModel, {None: tf.ModernBertModel, "masked_lm": tf.ModernBertForMaskedLM,
                           "sequence_classification": tf.ModernBertForSequenceClassification,
                           "token_classification": tf.ModernBertForTokenClassification,
                           "question_answering": tf.ModernBertForQuestionAnswering},
         dict(SMALL, **MODERNBERT_WINDOW), dict(TEXT_TINY, **MODERNBERT_WINDOW),
         variants={"every_tensor": dict(norm_bias=True, attention_bias=True, mlp_bias=True, classifier_bias=True)}),
    # AdapterHub 1.3.0 has no ModernBERT
)}
TEXT_ARCHS = tuple(name for name, arch in ARCHS.items() if arch.is_text)  # ViT reads every patch: no attention mask
ADAPTERHUB_ARCHS = tuple(name for name, arch in ARCHS.items() if arch.adapterhub_reference)
# BERT and RoBERTa, one network with other positions and heads: the tests that run every case run on these. The
# models built on theirs (XLM-RoBERTa, CamemBERT, ELECTRA) run the registry-wide tests and their own files'.
BERT_FAMILY = ("bert", "roberta")
BASE_SIZED = tuple(name for name, arch in ARCHS.items() if "base" in arch.variants)  # parameter counts at full size


def tiny_model(arch: str = "bert", variant: str = "plain", **fields: Any) -> PretrainedEncoder:
    """Our tiny random model in eval mode, no options unless ``variant`` names some. Seed 0: the same base weights
    every time, so that a saved adapter reloads into a fresh model."""
    entry = ARCHS[arch]
    torch.manual_seed(0)
    return entry.model(entry.config_class(**{**entry.tiny_size, **entry.options(variant), **fields})).eval()


def reference(hf_checkpoint, arch: str, head: str | None = None, variant: str = "default",
              **fields: Any) -> tuple[Path, tf.PreTrainedModel]:
    """(directory, transformers model in eval mode) of a random-init ``arch`` with ``head``, from the session cache
    of the ``hf_checkpoint`` fixture."""
    entry = ARCHS[arch]
    return hf_checkpoint(entry.hf[head], entry.hf_config(variant, **fields))


def inputs(config, lengths: tuple[int, ...] = (12, 7, 3), seed: int = 0) -> dict[str, Tensor]:
    """A batch for a model built from ``config`` (ours or transformers'): right-padded token ids of ``lengths`` and
    their mask, or for ViT one random image per length, drawn with ``seed``."""
    if ARCHS[config.model_type].is_text:
        ids, mask = padded_batch(config.vocab_size, config.pad_token_id, lengths)
        return {"input_ids": ids, "attention_mask": mask}
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(len(lengths), 3, config.image_size, config.image_size, generator=generator)}
