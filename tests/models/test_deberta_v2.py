"""DeBERTa v2/v3 against live transformers: log buckets, shared position keys, rel-embedding norm, convolution."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from peftcore.composition import Parallel
from peftcore.models.convert.keymap import ConversionError
from peftcore.models.deberta_v2 import DebertaV2Model
from peftcore.sites import SITE_NAMES, find_sites
from tests import archs
from tests.archs import ARCHS
from tests.conftest import SMALL
from tests.parity import assert_parity, padded_batch

DEBERTA_V2 = ARCHS["deberta-v2"]

LENGTHS = (20, 11, 4)  # distances up to 19: past 8 buckets' exact range (±4) and past max_relative_positions=6
V3 = dict(relative_attention=True, pos_att_type=["c2p", "p2c"], share_att_key=True, position_buckets=8,
          max_relative_positions=32, norm_rel_ebd="layer_norm", conv_kernel_size=3, position_biased_input=False)
CONFIGS = {
    "no_relative_attention": dict(type_vocab_size=2),
    "c2p_p2c_no_buckets": dict(relative_attention=True, pos_att_type=["c2p", "p2c"], max_position_embeddings=64),
    "c2p_shared_keys_clamped_span": dict(relative_attention=True, pos_att_type=["c2p"], share_att_key=True,
                                         max_relative_positions=6),
    "p2c_buckets_conv_groups_gelu": dict(relative_attention=True, pos_att_type=["p2c"], position_buckets=8,
                                         max_position_embeddings=64, conv_kernel_size=3, conv_groups=4,
                                         conv_act="gelu"),
    "c2p_p2c_separate_keys_buckets_norm": dict(relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8,
                                               max_relative_positions=16, norm_rel_ebd="layer_norm"),
    "v3_like": V3,
    "v3_like_conv_kernel_5_token_types": {**V3, "conv_kernel_size": 5, "type_vocab_size": 2},
}
HEADS = {
    tf.DebertaV2ForSequenceClassification: "logits",
    tf.DebertaV2ForMaskedLM: "logits",
    tf.DebertaV2ForTokenClassification: "logits",
    tf.DebertaV2ForQuestionAnswering: "start_logits",
}


def load(hf_checkpoint, hf_class, overrides):
    # weights 5x wider than transformers' 0.02, so that a wrong position term or bucket moves outputs by >= 1e-3
    config = DEBERTA_V2.hf_config("plain", **{"num_labels": 3, "initializer_range": 0.1, **overrides})
    directory, theirs = hf_checkpoint(hf_class, config)
    return DebertaV2Model.from_pretrained(directory).eval(), theirs


def run(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_hidden_states_and_attentions_equal_transformers_on_real_tokens(hf_checkpoint, overrides):
    ours, theirs = load(hf_checkpoint, tf.DebertaV2Model, overrides)
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    expected = run(theirs, ids, mask, output_hidden_states=True, output_attentions=True)
    got = run(ours, ids, mask, output_hidden_states=True, output_attentions=True)
    assert_parity(got.last_hidden_state, expected.last_hidden_state, mask=mask)
    for mine, reference in zip(got.hidden_states, expected.hidden_states, strict=True):  # layer 0's after the conv
        assert_parity(mine, reference, mask=mask)
    for mine, reference in zip(got.attentions, expected.attentions, strict=True):  # real query rows
        assert_parity(mine.transpose(1, 2), reference.transpose(1, 2), mask=mask)
    assert_parity(run(ours, ids, mask).last_hidden_state, expected.last_hidden_state, mask=mask)  # the SDPA path


def test_no_attention_mask_equals_transformers_on_every_token(hf_checkpoint):
    ours, theirs = load(hf_checkpoint, tf.DebertaV2Model, V3)
    ids = torch.randint(3, SMALL["vocab_size"], (2, 9))
    assert_parity(run(ours, ids, None).last_hidden_state, run(theirs, ids, None).last_hidden_state)


@pytest.mark.parametrize("hf_class", HEADS, ids=lambda c: c.__name__)
def test_head_logits_equal_transformers(hf_checkpoint, hf_class):
    labels = 2 if hf_class is tf.DebertaV2ForQuestionAnswering else 3  # span start and end
    ours, theirs = load(hf_checkpoint, hf_class, {**V3, "num_labels": labels})
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    expected, got = run(theirs, ids, mask), run(ours, ids, mask)
    field = HEADS[hf_class]
    token_level = getattr(expected, field).dim() > 2 or hf_class is tf.DebertaV2ForQuestionAnswering
    assert_parity(getattr(got, field), getattr(expected, field), mask=mask if token_level else None)
    if hf_class is tf.DebertaV2ForQuestionAnswering:
        assert_parity(got.end_logits, expected.end_logits, mask=mask)


@pytest.mark.parametrize("hf_class", [tf.DebertaV2Model, tf.DebertaV2ForSequenceClassification,
                                      tf.DebertaV2ForMaskedLM], ids=lambda c: c.__name__)
def test_export_to_hf_layout_loads_in_transformers_with_the_same_weights(hf_checkpoint, tmp_path, hf_class):
    ours, theirs = load(hf_checkpoint, hf_class, V3)
    ours.save_pretrained(tmp_path, format="hf")
    reloaded = hf_class.from_pretrained(tmp_path).eval()
    assert reloaded.state_dict().keys() == theirs.state_dict().keys()
    for key, tensor in theirs.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    assert_parity(run(reloaded, ids, mask)[0], run(theirs, ids, mask)[0])


@pytest.mark.parametrize("overrides", [CONFIGS["no_relative_attention"], V3], ids=["plain", "v3_like"])
def test_sites_are_exactly_site_names_embeddings_once_the_rest_in_every_layer(overrides):
    model = DebertaV2Model(DEBERTA_V2.config("plain", **overrides))
    sites = list(find_sites(model))
    assert {site.name for site in sites} == set(SITE_NAMES)
    assert [(site.layer, site.name) for site in sites[:2]] == [(None, "embeddings"), (None, "prompt")]
    for name in SITE_NAMES[2:]:
        assert [site.layer for site in sites if site.name == name] == list(range(SMALL["num_hidden_layers"]))


def test_share_att_key_runs_the_position_projections_through_the_q_and_k_sites():
    model = DebertaV2Model(DEBERTA_V2.config("plain", **V3)).eval()
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    calls = []
    model.layers[0].attn.k.plug = lambda x, y: calls.append(tuple(x.shape)) or y
    run(model, ids, mask)
    tokens = (1, sum(LENGTHS), SMALL["hidden_size"])  # the real tokens, packed
    assert calls == [tokens, (1, 2 * 8, SMALL["hidden_size"])]  # tokens, then 2 × 8 buckets


def test_adapters_that_differ_by_row_project_the_shared_key_positions_per_row():
    """Under share_att_key the relative embeddings, one set for the batch, go through q and k; where a mixed batch
    or Parallel runs other adapters there on other rows, each row's positions take its own adapter."""
    model = DebertaV2Model(DEBERTA_V2.config("plain", **V3)).eval()
    model.add_adapter("a", "lora[attn_matrices=['q', 'k', 'v']]")
    model.add_adapter("b", "lora[attn_matrices=['q', 'k']]")
    with torch.no_grad():
        for name in ("a", "b"):
            for parameter in model.adapter_parameters(name):
                parameter.normal_(0.0, 0.3)
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    alone = {}
    for name in ("a", None, "b"):
        model.set_active_adapters(name)
        alone[name] = run(model, ids, mask).last_hidden_state
    mixed = run(model, ids, mask, adapter_names=["a", None, "b"]).last_hidden_state
    for row, name in enumerate(["a", None, "b"]):
        assert_parity(mixed[row:row + 1], alone[name][row:row + 1], mask=mask[row:row + 1])
    model.set_active_adapters(Parallel("a", "b"))
    copies = run(model, ids, mask).last_hidden_state
    assert_parity(copies[:3], alone["a"], mask=mask)
    assert_parity(copies[3:], alone["b"], mask=mask)


def test_a_deberta_v1_checkpoint_is_refused_naming_its_model_type(hf_checkpoint):
    directory, _ = archs.reference(hf_checkpoint, "deberta", variant="plain")
    with pytest.raises(ConversionError, match="'deberta'"):
        DebertaV2Model.from_pretrained(directory)


@pytest.mark.parametrize(("overrides", "field"), [
    (dict(norm_rel_ebd="batch_norm"), "norm_rel_ebd"),
    (dict(conv_kernel_size=2), "conv_kernel_size"),
    (dict(conv_kernel_size=3, conv_groups=5), "conv_groups"),
    (dict(conv_act="mish"), "conv_act"),
    (dict(attention_head_size=32), "attention_head_size"),
    (dict(talking_head=True), "talking_head"),
    (dict(relative_attention=True, position_buckets=8, max_relative_positions=5), "position_buckets"),
    (dict(pos_att_type=["c2p", "p2p"]), "pos_att_type"),
])
def test_unsupported_config_values_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        DEBERTA_V2.config("plain", **overrides)


def test_bfloat16_forward_is_finite_and_close():
    model = DebertaV2Model(DEBERTA_V2.config("plain", **V3)).eval()
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    full = run(model, ids, mask).last_hidden_state
    half = run(model.to(torch.bfloat16), ids, mask).last_hidden_state
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    assert_parity(half, full, atol=0.1, mask=mask)


def test_torch_compile_gives_the_eager_output():
    model = DebertaV2Model(DEBERTA_V2.config("plain", **V3)).eval()
    ids, mask = padded_batch(SMALL["vocab_size"], 0, LENGTHS)
    compiled = torch.compile(model, backend="aot_eager")
    assert_parity(run(compiled, ids, mask).last_hidden_state, run(model, ids, mask).last_hidden_state, mask=mask)
