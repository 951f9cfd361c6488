"""CamemBERT equals transformers' CamembertModel and CamembertFor* on the same weights, both ways, and its config
defaults are camembert-base's. RoBERTa's network under another model type, checked as XLM-RoBERTa is
(tests/models/test_xlm_roberta.py). AdapterHub 1.3.0 has no CamemBERT, so no AdapterHub file is compared here."""

from __future__ import annotations

import adapters
import pytest
import transformers as tf

from peftcore.models import CamembertConfig, CamembertModel
from tests.archs import ARCHS
from tests.models.families import check_every_head, check_export, checkpoint

HEADS = tuple(ARCHS["camembert"].hf)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_equals_transformers_on_a_padded_batch(hf_checkpoint, head, unpad):
    check_every_head(hf_checkpoint, "camembert", head, unpad)


@pytest.mark.parametrize("head", HEADS)
def test_export_to_hf_layout_loads_in_transformers_with_the_same_outputs(hf_checkpoint, head, tmp_path):
    check_export(hf_checkpoint, "camembert", head, tmp_path)


def test_masked_lm_decoder_is_tied_to_the_word_embeddings(hf_checkpoint):
    directory, _ = checkpoint(hf_checkpoint, "camembert", "masked_lm")
    ours = CamembertModel.from_pretrained(directory)
    assert ours.head.decoder.weight is ours.embeddings.word.weight


def test_config_defaults_are_those_of_camembert_base():
    """camembert-base's config.json (transformers' own CamembertConfig defaults are BERT's, as XLM-RoBERTa's are)."""
    released = dict(vocab_size=32005, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, hidden_act="gelu", max_position_embeddings=514, type_vocab_size=1,
                    layer_norm_eps=1e-5, pad_token_id=1)
    assert CamembertConfig() == CamembertConfig(**released)


def test_adapterhub_has_no_camembert():
    """Why the registry gives CamemBERT no AdapterHub reference; it fails if AdapterHub adds one."""
    with pytest.raises(ValueError, match="camembert not pre-supported"):
        adapters.init(tf.CamembertModel(tf.CamembertConfig(**ARCHS["camembert"].size)))
