"""Prefix tuning: AdapterHub's numbers, one shared pool stored once, exact eject, padding, and DeBERTa."""

from __future__ import annotations

import pytest
import torch

from peftcore import PrefixTuningConfig
from peftcore.methods.prefix import PrefixTuning
from peftcore.models import BertModel, DebertaV2Model
from tests.archs import ARCHS, BERT_FAMILY, reference, tiny_model
from tests.conftest import SMALL
from tests.parity import assert_adapterhub_round_trip, assert_parity, padded_batch

CONFIGS = [
    "prefix_tuning[prefix_length=5, bottleneck_size=16]",
    "prefix_tuning_flat[prefix_length=4]",
    "prefix_tuning[prefix_length=3, bottleneck_size=8, use_gating=True, leave_out=[0]]",
    "prefix_tuning[prefix_length=3, bottleneck_size=8, use_gating=True, shared_gating=False]",
]


def run(model, ids, mask):
    return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", CONFIGS)
def test_prefix_trained_by_adapterhub_gives_its_outputs_and_parameter_count(adapterhub_trained, arch, config,
                                                                            tmp_path):
    directory, theirs, ids, mask = adapterhub_trained(arch, config)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        assert_parity(run(ours, ids, mask), run(theirs, ids, mask), mask=mask)  # padded queries attend differently
    assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]


def test_the_pool_is_stored_once_and_reloads_in_adapterhub(adapterhub_trained, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("roberta", CONFIGS[0])
    ours = assert_adapterhub_round_trip(directory, theirs, ids, mask, tmp_path)
    assert [key for key in ours.adapter_state("a") if "wte" in key] == ["shared_parameters.prefix.wte.weight"]


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]])
def test_eject_keeps_outputs_and_saves_a_flat_adapter_that_reloads(adapterhub_trained, config, tmp_path):
    directory, _, ids, mask = adapterhub_trained("bert", config)
    ours = BertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        before = run(ours, ids, mask)
        ours.eject_prefix_tuning("a")
        assert_parity(run(ours, ids, mask), before, atol=1e-6)
    assert ours.adapter_configs["a"].flat
    ours.save_adapter(tmp_path / "flat", "a")
    reloaded = BertModel.from_pretrained(directory).eval()
    reloaded.load_adapter(tmp_path / "flat", set_active=True)
    with torch.no_grad():
        assert_parity(run(reloaded, ids, mask), before, atol=1e-6)
    with pytest.raises(ValueError, match="flat already"):
        ours.eject_prefix_tuning("a")


def test_prefix_positions_are_attended_even_next_to_padding():
    model = tiny_model("bert", hidden_size=16, intermediate_size=24, vocab_size=50)
    model.add_adapter("p", PrefixTuningConfig(prefix_length=2, bottleneck_size=4), set_active=True)
    ids, mask = padded_batch(50, 0, (6, 3))
    with torch.no_grad():
        batched = run(model, ids, mask)
        alone = run(model, ids[1:, :3], mask[1:, :3])
        probs = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[0]
    assert_parity(batched[1, :3], alone[0])  # padding does not leak into a shorter example
    assert probs.shape[-1] == 2 + 6 and (probs[..., :2] > 0).all()


def test_prefix_works_with_deberta_relative_attention(hf_checkpoint):
    directory, _ = reference(hf_checkpoint, "deberta-v2")  # relative attention, c2p and p2c, 8 log buckets
    model = DebertaV2Model.from_pretrained(directory).eval()
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        plain = run(model, ids, mask)
        model.add_adapter("p", "prefix_tuning[prefix_length=4, bottleneck_size=8]", set_active=True)
        prefixed = run(model, ids, mask)
    assert torch.isfinite(prefixed).all() and not torch.allclose(prefixed, plain)


def test_only_the_prefix_parameters_train_and_the_base_stays_bit_identical():
    model = BertModel(BertModel.config_class(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=24))
    model.add_adapter("p", "prefix_tuning[prefix_length=2, bottleneck_size=4]")
    base = {name: p.clone() for name, p in model.named_parameters()}
    model.train_adapter("p")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=torch.randint(0, 50, (2, 5))).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, base[name])}
    assert changed and all(name.startswith("shared_parameters.p.prefix.") for name in changed)


@pytest.mark.parametrize(("config", "layer", "expected"), [
    (PrefixTuningConfig(), 0, ("attn.prefix",)),
    (PrefixTuningConfig(leave_out=(0,)), 0, ()),
    (PrefixTuningConfig(), None, ()),
])
def test_prefix_sits_in_every_attention_layer_not_left_out(config, layer, expected):
    assert PrefixTuning.sites(config, layer) == expected
