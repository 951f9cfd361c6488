"""XLM-RoBERTa equals transformers' XLMRobertaModel and XLMRobertaFor* on the same weights, both ways, and its config
defaults are xlm-roberta-base's. It is RoBERTa's network under another model type: tests/models/test_bert.py specifies
that network case by case; this file checks that every class of the family loads, runs and exports as itself."""

from __future__ import annotations

import pytest

from peftcore.models import XLMRobertaConfig, XLMRobertaModel
from tests.archs import ARCHS
from tests.models.families import check_every_head, check_export, checkpoint

XLM_ROBERTA = ARCHS["xlm-roberta"]
HEADS = tuple(XLM_ROBERTA.hf)  # None (the bare encoder with its pooler), then every head


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_equals_transformers_on_a_padded_batch(hf_checkpoint, head, unpad):
    check_every_head(hf_checkpoint, "xlm-roberta", head, unpad)


@pytest.mark.parametrize("head", HEADS)
def test_export_to_hf_layout_loads_in_transformers_with_the_same_outputs(hf_checkpoint, head, tmp_path):
    check_export(hf_checkpoint, "xlm-roberta", head, tmp_path)


def test_masked_lm_decoder_is_tied_to_the_word_embeddings(hf_checkpoint):
    directory, _ = checkpoint(hf_checkpoint, "xlm-roberta", "masked_lm")
    ours = XLMRobertaModel.from_pretrained(directory)
    assert ours.head.decoder.weight is ours.embeddings.word.weight


def test_config_defaults_are_those_of_xlm_roberta_base():
    """xlm-roberta-base's config.json (transformers' own XLMRobertaConfig defaults are BERT's: 30522 tokens, 512
    positions, two token types, eps 1e-12; config.json always states these fields, so loading never reads them)."""
    released = dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1)
    assert XLMRobertaConfig() == XLMRobertaConfig(**released)
    assert XLMRobertaModel(XLMRobertaConfig(num_hidden_layers=1)).max_length == 512
