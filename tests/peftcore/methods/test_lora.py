"""LoRA and (IA)^3: AdapterHub's numbers, exact merge/reset, placement, and clear errors for misuse."""

from __future__ import annotations

import adapters
import pytest
import torch
import transformers as tf

from peftcore import IA3Config, LoRAConfig
from peftcore.methods import IA3, LoRA
from peftcore.models import BertModel, RobertaModel
from tests.archs import ARCHS, BERT_FAMILY, reference, tiny_model
from tests.conftest import SMALL
from tests.parity import assert_parity, padded_batch

CONFIGS = [
    "lora",
    "ia3",
    "lora[r=4, alpha=16, attn_matrices=['q', 'k', 'v'], intermediate_lora=True, output_lora=True]",
    "lora[init_weights='bert', leave_out=[0]]",
    "lora[use_gating=True]",
    "ia3[use_gating=True]",
    "ia3[output_lora=True, attn_matrices=['q']]",
]


@pytest.mark.parametrize("arch", BERT_FAMILY)
@pytest.mark.parametrize("config", CONFIGS)
def test_adapter_trained_by_adapterhub_gives_its_outputs_and_parameter_count(adapterhub_trained, arch, config,
                                                                             tmp_path):
    directory, theirs, ids, mask = adapterhub_trained(arch, config)
    ours = ARCHS[arch].model.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
    assert ours.adapter_summary(as_dict=True)[0]["#param"] == theirs.adapter_summary(as_dict=True)[0]["#param"]


@pytest.mark.parametrize("config", ["lora", "ia3"])
def test_ours_saved_in_adapterhub_layout_loads_in_adapterhub(hf_checkpoint, config, tmp_path):
    directory, _ = reference(hf_checkpoint, "bert")
    ours = BertModel.from_pretrained(directory).eval()
    ours.add_adapter("a", config, set_active=True)
    with torch.no_grad():
        for parameter in ours.adapter_parameters("a"):
            parameter.add_(torch.randn_like(parameter) * 0.1)
    ours.save_adapter(tmp_path / "a", "a", format="adapterhub")
    theirs = tf.BertModel.from_pretrained(directory).eval()
    adapters.init(theirs)
    theirs.load_adapter(str(tmp_path / "a"))
    theirs.set_active_adapters("a")
    ids, mask = padded_batch(SMALL["vocab_size"], 0)
    with torch.no_grad():
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state,
                      theirs(input_ids=ids, attention_mask=mask).last_hidden_state, mask=mask)


@pytest.mark.parametrize("config", ["lora", "ia3", "lora[intermediate_lora=True, output_lora=True, r=2, alpha=5]"])
def test_merge_equals_unmerged_forward_and_reset_restores_weights_exactly(adapterhub_trained, config, tmp_path):
    directory, _, ids, mask = adapterhub_trained("roberta", config)
    ours = RobertaModel.from_pretrained(directory).eval()
    base = {key: t.clone() for key, t in ours.state_dict().items()}
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        unmerged = ours(input_ids=ids, attention_mask=mask).last_hidden_state
        ours.merge_adapter("a")
        assert all(site.module.plug is None for site in ours.sites_found)  # merged: no adapter work in forward
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, unmerged)
        for _ in range(100):
            ours.reset_adapter("a")
            ours.merge_adapter("a")
        ours.reset_adapter("a")
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, unmerged)
    for key, tensor in base.items():
        assert torch.equal(ours.state_dict()[key], tensor), key


def test_adapterhub_ia3_merge_ignores_the_bias_and_ours_does_not(adapterhub_trained, tmp_path):
    directory, theirs, ids, mask = adapterhub_trained("bert", "ia3[init_weights='bert']")
    ours = BertModel.from_pretrained(directory).eval()
    ours.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs.merge_adapter("a")
        their_merged = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        ours.merge_adapter("a")
        assert_parity(ours(input_ids=ids, attention_mask=mask).last_hidden_state, expected, mask=mask)
    assert (their_merged - expected).abs().max() > 1e-3


@pytest.fixture
def model():
    return tiny_model("bert", hidden_size=16, intermediate_size=24, vocab_size=50)


def test_merge_and_reset_misuse_fails_clearly_and_changes_nothing(model):
    model.add_adapter("a", "lora")
    model.add_adapter("b", "lora")
    model.add_adapter("gated", "lora[use_gating=True]")
    model.add_adapter("bottleneck", "seq_bn")
    with pytest.raises(ValueError, match="not merged"):
        model.reset_adapter("a")
    model.merge_adapter("a")
    weights = {key: t.clone() for key, t in model.state_dict().items()}
    for call, message in [(lambda: model.merge_adapter("a"), "merged already"),
                          (lambda: model.merge_adapter("b"), "one merged adapter per weight"),
                          (lambda: model.merge_adapter("gated"), "gated"),
                          (lambda: model.merge_adapter("bottleneck"),
                           "only LoRA and .IA.\\^3 adapters .DoRA and VeRA included. merge"),
                          (lambda: model.delete_adapter("a"), "reset_adapter"),
                          (lambda: model.train_adapter("a"), "merged into the weights")]:
        with pytest.raises(ValueError, match=message):
            call()
    assert all(torch.equal(model.state_dict()[key], t) for key, t in weights.items())


def test_training_updates_only_lora_weights_and_leaves_the_base_bit_identical(model):
    model.add_adapter("a", "lora[intermediate_lora=True]")
    base = {name: p.clone() for name, p in model.named_parameters() if ".adapters." not in name}
    model.train_adapter("a")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.a.lora_" in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 50, (2, 6))
    for _ in range(3):
        model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, parameter in model.named_parameters():
        if name in base:
            assert parameter.grad is None and torch.equal(parameter, base[name]), name


@pytest.mark.parametrize(("config", "layer", "expected"), [
    (LoRAConfig(), 0, ("attn.q", "attn.v")),
    (LoRAConfig(attn_matrices=("k",), intermediate_lora=True, output_lora=True), 1,
     ("attn.k", "ffn.intermediate", "ffn.output")),
    (LoRAConfig(selfattn_lora=False, output_lora=True), 0, ("ffn.output",)),
    (LoRAConfig(leave_out=(1,)), 1, ()),
    (LoRAConfig(), None, ()),
    (IA3Config(), 0, ()),  # scale mode is IA3's
])
def test_lora_sites_follow_the_config(config, layer, expected):
    assert LoRA.sites(config, layer) == expected


def test_ia3_sites_are_keys_values_and_the_intermediate_by_default():
    assert IA3.sites(IA3Config(), 0) == ("attn.k", "attn.v", "ffn.intermediate")


def test_lora_starts_as_the_identity(model):
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        plain = model(input_ids=ids).last_hidden_state
        model.add_adapter("a", "lora", set_active=True)
        assert torch.equal(model(input_ids=ids).last_hidden_state, plain)
