"""DeBERTa v1 against live transformers: disentangled attention, the fused in_proj split, heads, export, sites."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from safetensors.torch import save_file

from peftcore.models.convert.keymap import ConversionError
from peftcore.models.convert.tables import join_in_proj, split_in_proj
from peftcore.models.deberta import DebertaModel
from peftcore.sites import SITE_NAMES, find_sites
from tests import archs
from tests.archs import ARCHS
from tests.conftest import SMALL
from tests.parity import assert_parity, padded_batch

DEBERTA = ARCHS["deberta"]

LENGTHS = (20, 11, 4)  # longer than max_relative_positions=4 below, so relative distances clamp
CONFIGS = {
    "absolute_only": dict(type_vocab_size=2),
    "scale_counts_pos_att_type_without_relative_attention": dict(pos_att_type=["c2p", "p2c"]),
    "c2p_p2c": dict(relative_attention=True, pos_att_type=["c2p", "p2c"], max_position_embeddings=64),
    "c2p_clamped_span": dict(relative_attention=True, pos_att_type=["c2p"], max_relative_positions=4),
    "p2c_talking_head": dict(relative_attention=True, pos_att_type=["p2c"], talking_head=True,
                             max_relative_positions=16),
    "talking_head_no_absolute_positions": dict(relative_attention=True, pos_att_type="c2p|p2c", talking_head=True,
                                               position_biased_input=False, max_relative_positions=8),
    "relative_without_pos_att_type": dict(relative_attention=True, max_relative_positions=8),
    "embedding_size_projected": dict(relative_attention=True, pos_att_type=["c2p", "p2c"], embedding_size=48,
                                     max_relative_positions=8),
}
HEADS = {
    tf.DebertaForSequenceClassification: "logits",
    tf.DebertaForMaskedLM: "logits",
    tf.DebertaForTokenClassification: "logits",
    tf.DebertaForQuestionAnswering: "start_logits",
}
RICH = CONFIGS["c2p_p2c"]


def hf_config(**overrides) -> tf.DebertaConfig:
    """A tiny config; weights drawn 5x wider than transformers' 0.02 so that a wrong relative-position term moves
    the outputs by 1e-3 or more, far above the 1e-5 tolerance (at 0.02 it can hide below it)."""
    return DEBERTA.hf_config("plain", **{"num_labels": 3, "initializer_range": 0.1, **overrides})


def load(hf_checkpoint, hf_class, overrides):
    directory, theirs = hf_checkpoint(hf_class, hf_config(**overrides))
    return DebertaModel.from_pretrained(directory).eval(), theirs, directory


def run(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_hidden_states_and_attentions_equal_transformers_on_real_tokens(hf_checkpoint, overrides):
    ours, theirs, _ = load(hf_checkpoint, tf.DebertaModel, overrides)
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    expected = run(theirs, ids, mask, output_hidden_states=True, output_attentions=True)
    got = run(ours, ids, mask, output_hidden_states=True, output_attentions=True)
    assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)
    for mine, reference in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_parity(mine, reference, mask=mask)
    for mine, reference in zip(got.attentions, expected.attentions, strict=True):  # real query rows
        assert_parity(mine.transpose(1, 2), reference.transpose(1, 2), mask=mask)
    assert_parity(run(ours, ids, mask).last_hidden_state, expected.last_hidden_state, mask=mask)  # the SDPA path


def test_no_attention_mask_equals_transformers_on_every_token(hf_checkpoint):
    ours, theirs, _ = load(hf_checkpoint, tf.DebertaModel, RICH)
    ids = torch.randint(3, SMALL["vocab_size"], (2, 9))
    assert_parity(run(ours, ids, None).last_hidden_state, run(theirs, ids, None).last_hidden_state)


@pytest.mark.parametrize("hf_class", HEADS, ids=lambda c: c.__name__)
def test_head_logits_equal_transformers(hf_checkpoint, hf_class):
    labels = 2 if hf_class is tf.DebertaForQuestionAnswering else 3  # span start and end
    ours, theirs, _ = load(hf_checkpoint, hf_class, {**RICH, "num_labels": labels})
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    expected, got = run(theirs, ids, mask), run(ours, ids, mask)
    field = HEADS[hf_class]
    token_level = getattr(expected, field).dim() > 2 or hf_class is tf.DebertaForQuestionAnswering
    assert_parity(getattr(got, field), getattr(expected, field), mask=mask if token_level else None)
    if hf_class is tf.DebertaForQuestionAnswering:
        assert_parity(got.end_logits, expected.end_logits, mask=mask)
    if hf_class is tf.DebertaForMaskedLM:
        assert ours.head.decoder.weight is ours.embeddings.word.weight


@pytest.mark.parametrize("hf_class", [tf.DebertaModel, tf.DebertaForSequenceClassification, tf.DebertaForMaskedLM],
                         ids=lambda c: c.__name__)
def test_export_to_hf_layout_loads_in_transformers_with_the_same_outputs(hf_checkpoint, tmp_path, hf_class):
    ours, theirs, _ = load(hf_checkpoint, hf_class, {**RICH, "talking_head": True})
    ours.save_pretrained(tmp_path, format="hf")
    reloaded = hf_class.from_pretrained(tmp_path).eval()
    assert reloaded.state_dict().keys() == theirs.state_dict().keys()
    for key, tensor in theirs.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    assert_parity(run(reloaded, ids, mask)[0], run(theirs, ids, mask)[0])


def test_in_proj_split_is_interleaved_per_head_not_thirds():
    config = DEBERTA.config("plain")
    H, D, C = config.num_attention_heads, config.hidden_size // config.num_attention_heads, config.hidden_size
    rows = torch.arange(3 * H * D, dtype=torch.float32)[:, None].expand(-1, C)  # each row holds its own index
    q, k, v = split_in_proj(rows, config)
    head, within = torch.arange(H)[:, None], torch.arange(D)[None, :]
    for part, offset in ((q, 0), (k, 1), (v, 2)):
        assert torch.equal(part[:, 0], (head * 3 * D + offset * D + within).flatten().float())
    assert torch.equal(join_in_proj((q, k, v), config), rows)


def test_changing_only_q_equals_changing_only_the_query_rows_of_in_proj(hf_checkpoint):
    ours, theirs, directory = load(hf_checkpoint, tf.DebertaModel, RICH)
    reference = tf.DebertaModel.from_pretrained(directory).eval()  # a copy we may modify
    H, C = SMALL["num_attention_heads"], SMALL["hidden_size"]
    delta = 0.05 * torch.randn(C, C, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours.layers[1].attn.q.weight += delta
        in_proj = reference.encoder.layer[1].attention.self.in_proj.weight
        in_proj.view(H, 3, C // H, C)[:, 0] += delta.view(H, C // H, C)  # HF's query rows of each head
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    changed = run(ours, ids, mask).last_hidden_state
    assert_parity(changed, run(reference, ids, mask).last_hidden_state, mask=mask)
    assert (changed - run(theirs, ids, mask).last_hidden_state)[mask.bool()].abs().max() > 1e-3


@pytest.mark.parametrize("overrides", [CONFIGS["absolute_only"], {**RICH, "talking_head": True}],
                         ids=["absolute", "relative_talking_head"])
def test_sites_are_exactly_site_names_embeddings_once_the_rest_in_every_layer(overrides):
    model = DebertaModel(DEBERTA.config("plain", **overrides))
    sites = list(find_sites(model))
    assert {site.name for site in sites} == set(SITE_NAMES)
    assert [(site.layer, site.name) for site in sites[:2]] == [(None, "embeddings"), (None, "prompt")]
    for name in SITE_NAMES[2:]:
        assert [site.layer for site in sites if site.name == name] == list(range(SMALL["num_hidden_layers"]))


def test_prefix_keys_the_mask_hides_leave_real_tokens_unchanged(hf_checkpoint):
    ours, _, _ = load(hf_checkpoint, tf.DebertaModel, {**RICH, "talking_head": True})
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    plain = run(ours, ids, mask).last_hidden_state
    P = 3

    def prefix(hide: bool):
        def plug(k, v, mask_, x):
            B, H, _, D = k.shape
            pk, pv = torch.randn(2, B, H, P, D, generator=torch.Generator().manual_seed(2))
            column = torch.full((*mask_.shape[:-1], P), torch.finfo(k.dtype).min if hide else 0.0)  # (B, 1, 1|T, P)
            return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), torch.cat([column, mask_], dim=-1)
        return plug

    for layer in ours.layers:
        layer.attn.prefix.plug = prefix(hide=True)
    assert_parity(run(ours, ids, mask).last_hidden_state, plain, mask=mask)
    for layer in ours.layers:
        layer.attn.prefix.plug = prefix(hide=False)
    attended = run(ours, ids, mask, output_attentions=True)
    assert attended.attentions[0].shape[-1] == P + ids.shape[1]
    assert (attended.last_hidden_state - plain)[mask.bool()].abs().max() > 1e-3


def test_a_deberta_v2_checkpoint_is_refused_naming_its_model_type(hf_checkpoint):
    directory, _ = archs.reference(hf_checkpoint, "deberta-v2", variant="plain")
    with pytest.raises(ConversionError, match="'deberta-v2'"):
        DebertaModel.from_pretrained(directory)


def test_pos_att_type_accepts_transformers_old_string_form():
    assert DEBERTA.config("plain", pos_att_type="P2C | c2p").pos_att_type == ("p2c", "c2p")
    assert DEBERTA.config("plain", pos_att_type=None).pos_att_type == ()


@pytest.mark.parametrize(("overrides", "field"), [
    (dict(pos_att_type=("p2p",)), "pos_att_type"),
    (dict(pos_att_type=("c2p", "c2p")), "pos_att_type"),
    (dict(pooler_hidden_size=32), "pooler_hidden_size"),
    (dict(pooler_hidden_act="mish"), "pooler_hidden_act"),
    (dict(head="masked_lm", legacy=False), "legacy"),
])
def test_unsupported_config_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        DEBERTA.config("plain", **overrides)


def test_a_legacy_false_masked_lm_checkpoint_is_refused_but_loads_as_a_base_model(tmp_path):
    # transformers 4.57.6 ties this head's dense layer to the word embeddings and saves without the embeddings, so
    # it cannot reload its own file; the original Microsoft files hold every tensor, as written here
    theirs = tf.DebertaForMaskedLM(hf_config(**RICH, legacy=False, architectures=["DebertaForMaskedLM"])).eval()
    theirs.config.save_pretrained(tmp_path)
    save_file({key: t.clone() for key, t in theirs.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="legacy=False"):
        DebertaModel.from_pretrained(tmp_path)
    ours = DebertaModel.from_pretrained(tmp_path, head=None).eval()
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    expected = run(theirs.deberta, ids, mask).last_hidden_state
    assert_parity(run(ours, ids, mask).last_hidden_state, expected, mask=mask)
