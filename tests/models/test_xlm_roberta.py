"""XLM-RoBERTa equals transformers' XLMRobertaModel and XLMRobertaFor* on the same weights, both ways, and its config
defaults are xlm-roberta-base's. It is RoBERTa's network under another model type: tests/models/test_bert.py specifies
that network case by case; this file checks that every class of the family loads, runs and exports as itself."""

from __future__ import annotations

import pytest
import torch

from peftcore.models import XLMRobertaConfig, XLMRobertaModel, from_pretrained
from tests.archs import ARCHS, inputs, reference
from tests.parity import assert_outputs_parity, real_tokens

XLM_ROBERTA = ARCHS["xlm-roberta"]
HEADS = tuple(XLM_ROBERTA.hf)  # None (the bare encoder with its pooler), then every head


def checkpoint(hf_checkpoint, arch: str, head: str | None):
    """(directory, transformers model) of a random-init ``arch`` with ``head``; biases and norms randomised."""
    return reference(hf_checkpoint, arch, head, num_labels=2 if head == "question_answering" else 3)


def check_every_head(hf_checkpoint, arch: str, head: str | None, unpad: bool) -> None:
    """``from_pretrained`` picks our class by model_type and gives transformers' outputs on a padded batch: at real
    tokens unpadded (zeros at padding), at every position with ``unpad=False``."""
    directory, theirs = checkpoint(hf_checkpoint, arch, head)
    ours = from_pretrained(directory).eval()
    assert type(ours) is ARCHS[arch].model and ours.config.head == head
    ours.unpad = unpad
    batch = inputs(theirs.config)
    with torch.no_grad():
        got, expected = ours(**batch), theirs(**batch)
    assert_outputs_parity(got, expected, head, batch["attention_mask"] if unpad else None)
    if unpad and head is None:
        assert torch.equal(got.last_hidden_state, real_tokens(got.last_hidden_state, batch["attention_mask"]))


def check_export(hf_checkpoint, arch: str, head: str | None, tmp_path) -> None:
    """Ours saved in the HF layout loads in the transformers class of its head with our outputs."""
    directory, _ = checkpoint(hf_checkpoint, arch, head)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.save_pretrained(tmp_path)
    reloaded = ARCHS[arch].hf[head].from_pretrained(tmp_path).eval()
    batch = inputs(ours.config)
    with torch.no_grad():
        assert_outputs_parity(ours(**batch), reloaded(**batch), head, batch["attention_mask"])


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
