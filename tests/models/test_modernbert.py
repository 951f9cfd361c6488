"""ModernBERT equals transformers' ModernBertModel and ModernBertFor* on the same weights, both ways, on a batch longer
than the local window; its config.json names round trip. PEFT's files on its fused Wqkv, Wo and Wi load, and ours
load in PEFT (tests/peftcore/interop/test_peft.py).

The registry-wide tests (sites, unpadded execution, every method and composition, files, numerics, PEFT interop, the
CLI) run ModernBERT too; this file holds what is ModernBERT's own.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as tf

from peftcore.models import ModernBertConfig, ModernBertModel
from peftcore.models.layers import Padding
from peftcore.models.rotary import Rotary, attend_windowed
from tests.archs import ARCHS, inputs
from tests.models import families
from tests.parity import assert_parity

MODERNBERT = ARCHS["modernbert"]
HEADS = tuple(MODERNBERT.hf)  # None (the bare encoder: ModernBERT has no pooler), then every head


def run(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs)


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
@pytest.mark.parametrize("head", HEADS)
def test_every_head_equals_transformers_on_a_batch_longer_than_the_window(hf_checkpoint, head, unpad):
    assert MODERNBERT.config().local_attention < max(inputs(MODERNBERT.config())["attention_mask"].sum(dim=1))
    assert families.check_every_head(hf_checkpoint, "modernbert", head, unpad).pooler is None


@pytest.mark.parametrize("unpad", [True, False], ids=["unpadded", "padded"])
def test_mean_pooling_every_bias_and_three_layers_equal_transformers(hf_checkpoint, unpad):
    """classifier_pooling="mean" over the real tokens; norm, attention, MLP and classifier biases; a third layer
    (global again: every second layer is)."""
    families.check_every_head(hf_checkpoint, "modernbert", "sequence_classification", unpad, "every_tensor",
                              classifier_pooling="mean", num_hidden_layers=3)


@pytest.mark.parametrize("head", ["masked_lm", "sequence_classification"])
def test_export_loads_in_transformers_with_our_outputs(hf_checkpoint, head, tmp_path):
    """Wqkv joined back from q, k and v; the masked-LM decoder tied with its bias."""
    reloaded = families.check_export(hf_checkpoint, "modernbert", head, tmp_path, "every_tensor")
    assert type(reloaded).__name__ == MODERNBERT.hf[head].__name__


def test_hidden_states_attentions_positions_and_embedding_inputs_equal_transformers(hf_checkpoint):
    directory, _ = families.checkpoint(hf_checkpoint, "modernbert", None)
    theirs = tf.ModernBertModel.from_pretrained(directory, attn_implementation="eager").eval()
    ours = ModernBertModel.from_pretrained(directory).eval()
    batch = inputs(theirs.config)
    mask = batch["attention_mask"]
    expected = run(theirs, batch, output_hidden_states=True, output_attentions=True)
    got = run(ours, batch, output_hidden_states=True, output_attentions=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for mine, hers in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_parity(mine, hers, mask=mask)
    for mine, hers in zip(got.attentions, expected.attentions, strict=True):  # the local layer's: zeros off-window
        assert_parity(mine.transpose(1, 2), hers.transpose(1, 2), mask=mask)
    positions = {**batch, "position_ids": torch.arange(3, 3 + mask.shape[1])[None]}  # one row for all, as theirs
    ours.unpad = False
    assert_parity(run(ours, positions).last_hidden_state, run(theirs, positions).last_hidden_state)
    ours.unpad = True
    assert_parity(run(ours, positions).last_hidden_state, run(theirs, positions).last_hidden_state, mask=mask)
    embeds = {"inputs_embeds": theirs.embeddings.tok_embeddings(batch["input_ids"]), "attention_mask": mask}
    assert_parity(run(ours, embeds).last_hidden_state, run(theirs, embeds).last_hidden_state, mask=mask)


def test_token_type_ids_are_accepted_and_ignored_as_modernbert_has_none(hf_checkpoint):
    ours = ModernBertModel.from_pretrained(families.checkpoint(hf_checkpoint, "modernbert", None)[0]).eval()
    batch = inputs(ours.config)
    types = (torch.arange(batch["input_ids"].shape[1]) >= 4).long().expand_as(batch["input_ids"])
    assert torch.equal(run(ours, {**batch, "token_type_ids": types}).last_hidden_state,
                       run(ours, batch).last_hidden_state)


def test_windowed_attention_attends_within_the_window_and_to_every_prefix_position():
    """attend_windowed against softmax(q kᵀ / √D + mask) v written out: keys at most 2 tokens from the query, and the
    row's prefix keys whatever the distance; rows of 7 and 3 tokens (the second within the window: no mask)."""
    torch.manual_seed(0)
    H, D, P, lengths = 2, 8, 2, (7, 3)
    q, k, v = (torch.randn(1, sum(lengths), H * D) for _ in range(3))
    prefix = tuple(torch.randn(len(lengths), H, P, D) for _ in range(2))
    padding = Padding.of((torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long(), None, unpad=True)
    rotary = Rotary.build(torch.arange(7).expand(2, 7), (1.0,), D, padding, torch.float32, 2, padded_layout=False)
    assert rotary.row_masks[1] is None  # 3 tokens: all within 2 of each other
    got = attend_windowed(q, k, v, lengths, H, 0.0, rotary.row_masks, prefix)
    start = 0
    for row, length in enumerate(lengths):
        q_row, k_row, v_row = (t[0, start:start + length].unflatten(-1, (H, D)).transpose(0, 1) for t in (q, k, v))
        k_row, v_row = torch.cat([prefix[0][row], k_row], dim=1), torch.cat([prefix[1][row], v_row], dim=1)
        index = torch.arange(length)
        allowed = torch.cat([torch.ones(length, P, dtype=torch.bool),
                             (index[:, None] - index[None, :]).abs() <= 2], dim=1)  # (T, P+T)
        scores = (q_row @ k_row.transpose(-1, -2) / math.sqrt(D)).masked_fill(~allowed, -math.inf)
        expected = (scores.softmax(dim=-1) @ v_row).transpose(0, 1).flatten(1)  # (T, H D)
        assert_parity(got[0, start:start + length], expected)
        start += length


def test_config_json_names_round_trip_and_unsupported_values_are_refused(hf_checkpoint, tmp_path):
    directory, theirs = families.checkpoint(hf_checkpoint, "modernbert", None, norm_eps=1e-6,
                                            hidden_activation="gelu_pytorch_tanh", local_rope_theta=5000.0)
    ours = ModernBertModel.from_pretrained(directory)
    assert (ours.config.layer_norm_eps, ours.config.hidden_act, ours.config.local_rope_theta) == (
        1e-6, "gelu_pytorch_tanh", 5000.0)
    ours.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["norm_eps"], written["hidden_activation"]) == (1e-6, "gelu_pytorch_tanh")
    assert "layer_norm_eps" not in written and "type_vocab_size" in written
    for fields, message in ((dict(type_vocab_size=2), "token-type"), (dict(num_attention_heads=64), "even"),
                            (dict(classifier_pooling="max"), "classifier_pooling"),
                            (dict(head="multiple_choice"), "head")):
        with pytest.raises(ValueError, match=message):
            MODERNBERT.config(**fields)
    raw = json.loads((directory / "config.json").read_text())
    (tmp_path / "scaled").mkdir()
    (tmp_path / "scaled" / "config.json").write_text(json.dumps({**raw, "rope_scaling": {"rope_type": "linear"}}))
    with pytest.raises(ValueError, match="rope_scaling"):
        ModernBertModel.config_from(json.loads((tmp_path / "scaled" / "config.json").read_text()))
    assert isinstance(ModernBertModel.config_from(theirs.config), ModernBertConfig)
